//! Alerting (issue 22, under way): what a rule says and how it is checked
//! ([`rule`]), the state of each series a rule watches ([`series`]),
//! thresholds learned from the stored rollups ([`baseline`]), and the
//! evaluation of a rule as a minute closes, the same for the live path and
//! for a backtest over a past range ([`evaluate`]), reading the store's
//! rollups ([`store`]).

pub mod baseline;
pub mod evaluate;
pub mod outbox;
pub mod rule;
pub mod series;
pub mod state;
pub mod store;
pub mod synthetic;

pub use baseline::{Baseline, Sensitivity};
pub use evaluate::{Evaluation, Firing, Source, backtest, evaluate};
pub use outbox::{Channel, Notification};
pub use rule::{NoData, Op, Rule, RuleError, Severity, Threshold};
pub use series::{Series, SeriesState, Transition, fingerprint};
pub use state::{Alert, AlertState, Change, HistoryEntry, Judged, StateError, StoredRule};
pub use store::StoreSource;
