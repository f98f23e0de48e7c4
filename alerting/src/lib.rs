//! Alerting: what a rule says and how it is checked ([`rule`]), the state
//! of each series a rule watches ([`series`]), thresholds learned from the
//! stored rollups ([`baseline`]), and the evaluation of a rule as a minute
//! closes, the same for the live path and for a backtest over a past range
//! ([`evaluate`]), reading the store's rollups ([`store`]). What a node
//! keeps ([`state`]: rules, alerts, [`channel`]s, [`silence`]s and the
//! [`outbox`]) changes only by changes applied in order; [`message`] says
//! what a notification reads like on each kind of channel.

pub mod baseline;
pub mod channel;
pub mod evaluate;
pub mod message;
pub mod outbox;
pub mod rule;
pub mod series;
pub mod silence;
pub mod state;
pub mod store;
pub mod synthetic;

pub use baseline::{Baseline, Sensitivity};
pub use channel::{Channel, Delivery, Tls};
pub use evaluate::{Evaluation, Firing, Source, backtest, evaluate};
pub use outbox::{Notification, Notified};
pub use rule::{NoData, Op, Rule, RuleError, Severity, Threshold};
pub use series::{Series, SeriesState, Transition, fingerprint};
pub use silence::{Silence, alert_labels};
pub use state::{Alert, AlertState, Change, HistoryEntry, Judged, StateError, StoredRule};
pub use store::StoreSource;
