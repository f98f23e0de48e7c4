//! Rate limits: a token bucket (governor's GCRA) per API key, its size and
//! refill set by the key's role (`[rate_limits]`); ingest spends one token
//! per event, every other call one per call. Failed authentications spend
//! from a bucket per client address, and an address that empties it is
//! refused for a while whatever it sends, so guessing keys is slow.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::Deserialize;

use super::Role;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;
type Direct = RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    DefaultClock,
    StateInformationMiddleware,
>;

/// A rate: `count` per `per`, as `"100/s"`, `"6000/m"`, `"100000/h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    count: NonZeroU32,
    per: Duration,
}

impl Rate {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (count, unit) = text.trim().split_once('/')?;
        let count = NonZeroU32::new(count.trim().replace('_', "").parse().ok()?)?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return None,
        };
        Some(Self { count, per })
    }

    fn quota(self) -> Quota {
        let every = (self.per / self.count.get()).max(Duration::from_nanos(1));
        Quota::with_period(every)
            .unwrap_or_else(|| Quota::per_second(self.count))
            .allow_burst(self.count)
    }
}

/// `[rate_limits]` in the configuration file: a rate per role (`"none"`:
/// no limit) and for failed authentications per client address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSettings {
    pub admin: Option<String>,
    /// Events ingested.
    pub writer: Option<String>,
    pub viewer: Option<String>,
    pub peer: Option<String>,
    pub failed_auth: Option<String>,
}

/// The defaults: none for the operators' own keys and the peers, generous
/// for ingest and dashboards, tight for guessing.
const DEFAULTS: [(Role, &str); 4] = [
    (Role::Admin, "none"),
    (Role::Writer, "1000000/s"),
    (Role::Viewer, "100/s"),
    (Role::Peer, "none"),
];
const DEFAULT_FAILED_AUTH: &str = "30/m";

/// A refusal: when to try again (`None`: more than the bucket ever holds),
/// and the bucket's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limited {
    pub(crate) retry_after: Option<Duration>,
    pub(crate) limit: u32,
}

/// What a call left in its bucket: for `RateLimit-Limit` and `-Remaining`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Left {
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
}

/// A key's own bucket: the rate as written, the bucket, its size.
type OwnBucket = (String, Arc<Direct>, u32);

/// The node's rate limits.
pub(crate) struct RateLimits {
    per_role: HashMap<Role, (Keyed<String>, u32)>,
    /// Keys with a rate of their own, by key id.
    own: Mutex<HashMap<String, OwnBucket>>,
    failed: (Keyed<IpAddr>, u32),
    /// Addresses refused until then, for failing too often.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").finish_non_exhaustive()
    }
}

/// What governor said, as a count left or a refusal.
fn outcome(
    checked: Result<
        Result<
            governor::middleware::StateSnapshot,
            governor::NotUntil<governor::clock::QuantaInstant>,
        >,
        governor::InsufficientCapacity,
    >,
    limit: u32,
) -> Result<Option<Left>, Limited> {
    match checked {
        Ok(Ok(snapshot)) => Ok(Some(Left {
            limit,
            remaining: snapshot.remaining_burst_capacity(),
        })),
        Ok(Err(not_until)) => Err(Limited {
            retry_after: Some(not_until.wait_time_from(DefaultClock::default().now())),
            limit,
        }),
        // More than the bucket ever holds at once: it would never pass.
        Err(_) => Err(Limited {
            retry_after: None,
            limit,
        }),
    }
}

impl RateLimits {
    /// The limits from `[rate_limits]`; a rate that does not parse names its key.
    pub(crate) fn new(s: &RateSettings) -> anyhow::Result<Self> {
        let given = |role: Role| match role {
            Role::Admin => &s.admin,
            Role::Writer => &s.writer,
            Role::Viewer => &s.viewer,
            Role::Peer => &s.peer,
        };
        let rate = |key: &str, text: &str| {
            Rate::parse(text).ok_or_else(|| {
                anyhow::anyhow!("`rate_limits.{key}`: `{text}` is not a rate like 100/s, 6000/m or 100000/h (or `none`)")
            })
        };
        let mut per_role = HashMap::new();
        for (role, default) in DEFAULTS {
            let text = given(role).as_deref().unwrap_or(default);
            if text == "none" {
                continue;
            }
            let r = rate(role.name(), text)?;
            per_role.insert(
                role,
                (
                    RateLimiter::keyed(r.quota()).with_middleware(),
                    r.count.get(),
                ),
            );
        }
        let failed = rate(
            "failed_auth",
            s.failed_auth.as_deref().unwrap_or(DEFAULT_FAILED_AUTH),
        )?;
        Ok(Self {
            per_role,
            own: Mutex::new(HashMap::new()),
            failed: (
                RateLimiter::keyed(failed.quota()).with_middleware(),
                failed.count.get(),
            ),
            blocked: Mutex::new(HashMap::new()),
        })
    }

    /// Spends `n` tokens of key `id`: from its own bucket when it has a
    /// rate of its own (`own`), else from its role's; `None` if there is no
    /// limit.
    pub(crate) fn spend(
        &self,
        id: &str,
        role: Role,
        own: Option<&str>,
        n: u32,
    ) -> Result<Option<Left>, Limited> {
        let n = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
        if let Some(text) = own {
            let Some(rate) = Rate::parse(text) else {
                return Ok(None); // `none`
            };
            let (limiter, limit) = {
                let mut own = self
                    .own
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let entry = own.entry(id.to_owned()).or_insert_with(|| {
                    (
                        text.to_owned(),
                        Arc::new(RateLimiter::direct(rate.quota()).with_middleware()),
                        rate.count.get(),
                    )
                });
                if entry.0 != text {
                    *entry = (
                        text.to_owned(),
                        Arc::new(RateLimiter::direct(rate.quota()).with_middleware()),
                        rate.count.get(),
                    );
                }
                (entry.1.clone(), entry.2)
            };
            return outcome(limiter.check_n(n), limit);
        }
        let Some((limiter, limit)) = self.per_role.get(&role) else {
            return Ok(None);
        };
        outcome(limiter.check_key_n(&id.to_owned(), n), *limit)
    }

    /// Whether `ip` is refused for failing too often, and for how long.
    pub(crate) fn blocked(&self, ip: IpAddr) -> Option<Limited> {
        let mut blocked = self
            .blocked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let until = *blocked.get(&ip)?;
        let now = Instant::now();
        if until <= now {
            blocked.remove(&ip);
            return None;
        }
        Some(Limited {
            retry_after: Some(until - now),
            limit: self.failed.1,
        })
    }

    /// Counts a failed authentication from `ip`; past the limit, the
    /// address is refused until its bucket has room again, starting now.
    pub(crate) fn failed(&self, ip: IpAddr) -> Option<Limited> {
        let refused = self.failed.0.check_key(&ip).err().map(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let now = Instant::now();
            let mut blocked = self
                .blocked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Forget addresses that stopped long ago, so the map stays small.
            blocked.retain(|_, until| *until > now);
            blocked.insert(ip, now + wait);
            Limited {
                retry_after: Some(wait),
                limit: self.failed.1,
            }
        });
        self.failed.0.retain_recent();
        refused
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rates_parse_and_buckets_refill_at_their_rate() {
        assert_eq!(Rate::parse("100/s").map(|r| r.count.get()), Some(100));
        assert_eq!(
            Rate::parse("1_000/m").map(|r| r.per),
            Some(Duration::from_secs(60))
        );
        for bad in ["", "0/s", "10", "10/d", "x/s"] {
            assert_eq!(Rate::parse(bad), None, "{bad}");
        }
        let limits = RateLimits::new(&RateSettings {
            viewer: Some("3/s".into()),
            writer: Some("10/s".into()),
            failed_auth: Some("2/m".into()),
            ..RateSettings::default()
        })
        .unwrap();
        for left in [2, 1, 0] {
            assert_eq!(
                limits.spend("k", Role::Viewer, None, 1),
                Ok(Some(Left {
                    limit: 3,
                    remaining: left
                }))
            );
        }
        let refused = limits.spend("k", Role::Viewer, None, 1).unwrap_err();
        let wait = refused.retry_after.unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(334),
            "{wait:?}"
        );
        assert!(
            limits.spend("other", Role::Viewer, None, 1).is_ok(),
            "each key has its own bucket"
        );
        // Events: a batch spends one token per event, and one bigger than the bucket never passes.
        assert!(limits.spend("w", Role::Writer, None, 10).is_ok());
        assert!(limits.spend("w", Role::Writer, None, 1).is_err());
        assert_eq!(
            limits
                .spend("w2", Role::Writer, None, 11)
                .unwrap_err()
                .retry_after,
            None
        );
        assert_eq!(
            limits.spend("p", Role::Peer, None, 1_000_000),
            Ok(None),
            "peers have no limit by default"
        );
        // A key's own rate wins over its role's; `none` is no limit.
        assert!(limits.spend("own", Role::Viewer, Some("1/s"), 1).is_ok());
        assert!(limits.spend("own", Role::Viewer, Some("1/s"), 1).is_err());
        assert_eq!(
            limits.spend("free", Role::Viewer, Some("none"), 1_000),
            Ok(None)
        );
        // Two failures pass; the third is refused and blocks the address,
        // whatever it sends next.
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert_eq!((limits.failed(ip), limits.failed(ip)), (None, None));
        assert!(limits.blocked(ip).is_none());
        assert!(limits.failed(ip).is_some());
        let blocked = limits.blocked(ip).unwrap();
        assert!(
            blocked.retry_after.unwrap() > Duration::from_secs(20),
            "{blocked:?}"
        );
        assert!(limits.blocked("127.0.0.8".parse().unwrap()).is_none());
    }
}
