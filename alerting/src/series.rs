//! One series of a rule (one key, or the total): inactive, pending while
//! the condition holds for less than the rule's `for`, firing, and resolved
//! once it has not held for `keep_firing_for`. An alert is known by the
//! fingerprint of its rule and key.

use toplog_types::Micros;
use twox_hash::XxHash3_128;

const MINUTE_US: i64 = 60_000_000;

/// Where a series stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesState {
    Inactive,
    /// The condition has held since `since` (a minute's end), not yet for long enough.
    Pending {
        since: Micros,
    },
    /// Firing since `since`; the condition last held at `last_held`.
    Firing {
        since: Micros,
        last_held: Micros,
    },
}

/// A change of state, as history records it and notifications tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Pending,
    /// Pending, then the condition stopped holding before `for` ran out.
    Cleared,
    Firing,
    Resolved,
}

impl Transition {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Cleared => "inactive",
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }

    /// Whether channels are told (pending and cleared are history only).
    pub fn is_notified(self) -> bool {
        matches!(self, Self::Firing | Self::Resolved)
    }
}

/// A rule's series.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub key: String,
    pub state: SeriesState,
}

impl Series {
    pub fn new(key: &str) -> Self {
        Self {
            key: key.to_owned(),
            state: SeriesState::Inactive,
        }
    }

    /// The series judged at minute end `at`: whether the condition holds
    /// (`None`: no judgement, the state stays). The change it made, if any.
    pub fn step(
        &mut self,
        at: Micros,
        holds: Option<bool>,
        for_minutes: u32,
        keep_firing_for_minutes: u32,
    ) -> Option<Transition> {
        let minutes = |from: Micros| (at.get() - from.get()) / MINUTE_US;
        let (next, change) = match (self.state, holds?) {
            (SeriesState::Inactive, false) => return None,
            (SeriesState::Inactive, true) if for_minutes == 0 => (
                SeriesState::Firing {
                    since: at,
                    last_held: at,
                },
                Some(Transition::Firing),
            ),
            (SeriesState::Inactive, true) => (
                SeriesState::Pending { since: at },
                Some(Transition::Pending),
            ),
            (SeriesState::Pending { since }, true) if minutes(since) >= i64::from(for_minutes) => (
                SeriesState::Firing {
                    since: at,
                    last_held: at,
                },
                Some(Transition::Firing),
            ),
            (SeriesState::Pending { .. }, true) => return None,
            (SeriesState::Pending { .. }, false) => {
                (SeriesState::Inactive, Some(Transition::Cleared))
            }
            (SeriesState::Firing { since, .. }, true) => (
                SeriesState::Firing {
                    since,
                    last_held: at,
                },
                None,
            ),
            (SeriesState::Firing { last_held, .. }, false)
                if minutes(last_held) > i64::from(keep_firing_for_minutes) =>
            {
                (SeriesState::Inactive, Some(Transition::Resolved))
            }
            (SeriesState::Firing { .. }, false) => return None,
        };
        self.state = next;
        change
    }
}

/// The alert's id: a hash of its rule's id and its key, the same on every
/// member and across restarts.
pub fn fingerprint(rule_id: &str, key: &str) -> String {
    let mut bytes = Vec::with_capacity(rule_id.len() + key.len() + 1);
    bytes.extend_from_slice(rule_id.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(key.as_bytes());
    format!("{:032x}", XxHash3_128::oneshot(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(n: i64) -> Micros {
        Micros::new(n * MINUTE_US)
    }

    /// The transitions of a series judged minute after minute.
    fn run(holds: &[Option<bool>], for_m: u32, keep_m: u32) -> Vec<(i64, &'static str)> {
        let mut s = Series::new("GET /a");
        (holds.iter().enumerate())
            .filter_map(|(i, h)| {
                s.step(minute(i as i64), *h, for_m, keep_m)
                    .map(|t| (i as i64, t.name()))
            })
            .collect()
    }

    #[test]
    fn a_series_fires_after_for_and_resolves_after_keep_firing_for() {
        let (t, f) = (Some(true), Some(false));
        assert_eq!(
            run(&[f, t, t, t, t, f, t, f, f, f], 2, 2),
            [(1, "pending"), (3, "firing"), (9, "resolved")]
        );
        // Held for less than `for`: pending, then cleared, never firing.
        assert_eq!(run(&[t, t, f, f], 2, 0), [(0, "pending"), (2, "inactive")]);
        // No `for`: firing at once; resolved the first minute it stops holding.
        assert_eq!(run(&[t, f, f], 0, 0), [(0, "firing"), (1, "resolved")]);
        // No judgement (no data, kept): the state stays.
        assert_eq!(
            run(&[t, None, None, f], 0, 0),
            [(0, "firing"), (3, "resolved")]
        );
    }

    #[test]
    fn fingerprints_differ_by_rule_and_key_and_stay_put() {
        assert_eq!(fingerprint("r1", "GET /a"), fingerprint("r1", "GET /a"));
        assert_ne!(fingerprint("r1", "GET /a"), fingerprint("r2", "GET /a"));
        assert_ne!(fingerprint("r1", "a"), fingerprint("r1a", ""));
        assert_eq!(fingerprint("r1", "").len(), 32);
    }
}
