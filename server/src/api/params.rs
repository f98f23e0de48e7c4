//! Query-string parameters: each route's declared list, and the values of one
//! request checked against it. The OpenAPI document is made from the same
//! declarations ([`super::openapi`]), so what a handler refuses is what the
//! document says it refuses.

use std::collections::HashMap;

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use toplog_engine::{Filters, TimeRange};
use toplog_types::{Arg, Param, Shape};
use toplog_types::{MAX_ENDPOINT_LEN, MAX_REQUEST_ID_LEN, MAX_USER_ID_LEN, Micros};

use super::{ApiError, ApiResult};

/// The query string a route takes: its parameters and which are required.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QuerySpec {
    pub(crate) params: &'static [Param],
    pub(crate) required: &'static [&'static str],
}

impl QuerySpec {
    pub(crate) const NONE: Self = Self {
        params: &[],
        required: &[],
    };
}

/// How far back analytics queries look without a `start`: an hour.
const DEFAULT_LOOKBACK_US: i64 = 3_600_000_000;

pub(super) const START: Param = Param {
    name: "start",
    shape: Shape::Time,
    doc: "Range start, inclusive: RFC 3339 or epoch milliseconds.",
};
pub(super) const END: Param = Param {
    name: "end",
    shape: Shape::Time,
    doc: "Range end, exclusive: RFC 3339 or epoch milliseconds.",
};
pub(super) const CONSISTENCY: Param = Param {
    name: "consistency",
    shape: Shape::Choice(&["eventual", "strong"]),
    doc: "In a cluster: `eventual` (default) answers from this node's store as it is; `strong` first waits until this node has applied every write committed when the read arrived (ReadIndex: linearizable). A single node is always strong.",
};
pub(super) const ALLOW_PARTIAL: Param = Param {
    name: "allow_partial",
    shape: Shape::Choice(&["false", "true"]),
    doc: "In a sharded cluster: `true` answers from the shards that can be read when one cannot (no replica with a leader answered), with `meta.partial` and `meta.missing_shards`; `false` (default) answers `503 partial_data` naming the shards instead of a smaller number.",
};
pub(super) const ENDPOINT: Param = Param {
    name: "endpoint",
    shape: Shape::Text {
        min: 0,
        max: MAX_ENDPOINT_LEN,
    },
    doc: "Only requests to this route template.",
};
pub(super) const USER_ID: Param = Param {
    name: "user_id",
    shape: Shape::Text {
        min: 0,
        max: MAX_USER_ID_LEN,
    },
    doc: "Only requests of this user (empty: anonymous).",
};
pub(super) const METHOD: Param = Param {
    name: "method",
    shape: Shape::Text {
        min: 0,
        max: MAX_ENDPOINT_LEN,
    },
    doc: "Only requests with this HTTP method.",
};
pub(super) const STATUS_CODE: Param = Param {
    name: "status_code",
    shape: Shape::Int { min: 100, max: 599 },
    doc: "Only requests with this status code.",
};
pub(super) const STATUS_CLASS: Param = Param {
    name: "status_class",
    shape: Shape::Int { min: 1, max: 5 },
    doc: "Only requests of this status class: 1 to 5 for 1xx to 5xx.",
};
pub(super) const REQUEST_ID: Param = Param {
    name: "request_id",
    shape: Shape::Text {
        min: 0,
        max: MAX_REQUEST_ID_LEN,
    },
    doc: "Only the request with this id.",
};
pub(super) const METRIC: Param = Param {
    name: "metric",
    shape: Shape::Choice(&toplog_query::Metric::NAMES),
    doc: "What to rank or plot by.",
};

/// One request's query string, checked against its route's declarations.
pub(super) struct Params {
    spec: QuerySpec,
    values: HashMap<String, String>,
}

impl Params {
    /// Refuses unknown and missing required parameters; values are checked
    /// as they are read.
    pub(super) fn new(
        raw: Result<Query<HashMap<String, String>>, QueryRejection>,
        spec: QuerySpec,
    ) -> ApiResult<Self> {
        let Query(values) =
            raw.map_err(|e| ApiError::bad_request("invalid_parameter", e.body_text()))?;
        Self::from_values(values, spec)
    }

    /// [`Params::new`] of values given by name (a gRPC request's fields).
    pub(super) fn from_values(values: HashMap<String, String>, spec: QuerySpec) -> ApiResult<Self> {
        if let Some(bad) = values
            .keys()
            .find(|k| !spec.params.iter().any(|p| p.name == k.as_str()))
        {
            let names: Vec<&str> = spec.params.iter().map(|p| p.name).collect();
            return Err(ApiError::parameter(
                bad,
                format!("unknown parameter (allowed: {})", names.join(", ")),
            ));
        }
        if let Some(missing) = spec.required.iter().find(|r| !values.contains_key(**r)) {
            return Err(ApiError::parameter(missing, "is required".into()));
        }
        Ok(Self { spec, values })
    }

    /// The checked value of `name`, `None` when absent.
    fn arg(&self, name: &str) -> ApiResult<Option<Arg>> {
        let Some(text) = self.values.get(name) else {
            return Ok(None);
        };
        let param = self
            .spec
            .params
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| ApiError::internal(format!("`{name}` is not declared")))?;
        Ok(Some(param.parse(text)?))
    }

    fn mismatch(name: &str) -> ApiError {
        ApiError::internal(format!("`{name}` is declared with another shape"))
    }

    pub(super) fn time(&self, name: &str) -> ApiResult<Option<Micros>> {
        match self.arg(name)? {
            None => Ok(None),
            Some(Arg::Time(t)) => Ok(Some(t)),
            Some(_) => Err(Self::mismatch(name)),
        }
    }

    pub(super) fn int(&self, name: &str) -> ApiResult<Option<u64>> {
        match self.arg(name)? {
            None => Ok(None),
            Some(Arg::Int(n)) => Ok(Some(n)),
            Some(_) => Err(Self::mismatch(name)),
        }
    }

    /// A whole number declared to fit `T`.
    pub(super) fn small<T: TryFrom<u64>>(&self, name: &str) -> ApiResult<Option<T>> {
        self.int(name)?
            .map(|n| T::try_from(n).map_err(|_| Self::mismatch(name)))
            .transpose()
    }

    pub(super) fn choice(&self, name: &str) -> ApiResult<Option<&'static str>> {
        match self.arg(name)? {
            None => Ok(None),
            Some(Arg::Choice(c)) => Ok(Some(c)),
            Some(_) => Err(Self::mismatch(name)),
        }
    }

    pub(super) fn text(&self, name: &str) -> ApiResult<Option<String>> {
        match self.arg(name)? {
            None => Ok(None),
            Some(Arg::Text(s)) => Ok(Some(s)),
            Some(_) => Err(Self::mismatch(name)),
        }
    }

    /// A duration in microseconds.
    pub(super) fn duration(&self, name: &str) -> ApiResult<Option<i64>> {
        match self.arg(name)? {
            None => Ok(None),
            Some(Arg::Duration(us)) => Ok(Some(us)),
            Some(_) => Err(Self::mismatch(name)),
        }
    }

    /// A day, as days since 1970-01-01.
    pub(super) fn date(&self, name: &str) -> ApiResult<Option<i64>> {
        match self.arg(name)? {
            None => Ok(None),
            Some(Arg::Date(d)) => Ok(Some(d)),
            Some(_) => Err(Self::mismatch(name)),
        }
    }

    /// `start`/`end`, everything by default.
    pub(super) fn range(&self) -> ApiResult<TimeRange> {
        let start = self.time("start")?.unwrap_or(Micros::new(0));
        let end = self.time("end")?.unwrap_or(Micros::new(i64::MAX));
        ordered(start, end)
    }

    /// `start`/`end` for analytics queries: the last hour by default.
    pub(super) fn recent_range(&self) -> ApiResult<TimeRange> {
        let now = Micros::now().saturating_add_micros(1);
        let end = self.time("end")?.unwrap_or(now);
        let start = self
            .time("start")?
            .unwrap_or(end.saturating_sub_micros(DEFAULT_LOOKBACK_US));
        ordered(start, end)
    }

    /// The event filters plus `status_class`.
    pub(super) fn query_filters(&self) -> ApiResult<Filters> {
        let mut filters = self.filters()?;
        filters.status_class = self.small("status_class")?;
        Ok(filters)
    }

    pub(super) fn filters(&self) -> ApiResult<Filters> {
        Ok(Filters {
            endpoint: self.text("endpoint")?,
            user_id: self.text("user_id")?,
            method: self.text("method")?,
            status_code: self.small("status_code")?,
            status_class: None,
            request_id: self.text("request_id")?,
        })
    }
}

/// A range that ends after it starts; each bound alone is valid, so a
/// reversed pair is `422`, not `400`.
fn ordered(start: Micros, end: Micros) -> ApiResult<TimeRange> {
    if start >= end {
        return Err(toplog_query::QueryError::Conflicting(
            "start",
            format!("must be before `end` ({start} >= {end})"),
        )
        .into());
    }
    Ok(TimeRange { start, end })
}
