//! The store as a rule's source: each window read from the rollups alone.

use toplog_engine::{Engine, TimeRange};
use toplog_query::{Order, rollups_answer, window_values};
use toplog_types::Micros;

use crate::evaluate::{Reading, Source};
use crate::{Op, Rule, RuleError};

/// A rule's readings from `engine`.
pub struct StoreSource<'a> {
    pub engine: &'a Engine,
}

impl Source for StoreSource<'_> {
    fn readings(&self, rule: &Rule, start: Micros, end: Micros) -> Result<Vec<Reading>, String> {
        let (rows, _) = window_values(
            self.engine,
            rule.metric,
            rule.by,
            &rule.filters,
            TimeRange { start, end },
            rule.max_series,
            rule.series_order(),
        )
        .map_err(|e| e.to_string())?;
        Ok(Reading::of_rows(rows))
    }
}

impl Rule {
    /// The order its series are read in: nearest the threshold's side
    /// first, so a cap on series keeps the ones that can fire.
    pub fn series_order(&self) -> Order {
        match self.op {
            Op::Above => Order::Desc,
            Op::Below => Order::Asc,
        }
    }
}

impl Reading {
    /// The readings of a window's rows (key, value, requests).
    pub fn of_rows(rows: Vec<toplog_query::TopKRow>) -> Vec<Reading> {
        (rows.into_iter())
            .map(|r| Reading {
                key: r.key,
                value: r.value,
                count: r.count,
            })
            .collect()
    }
}

impl Rule {
    /// Refuses a rule the rollups cannot answer (rules never read raw rows),
    /// saying why.
    pub fn check_rollups(&self) -> Result<(), RuleError> {
        rollups_answer(self.by, &self.filters, self.metric).map_err(|e| RuleError {
            field: if self.by.is_some() && self.filters == Default::default() {
                "by".into()
            } else {
                "filters".into()
            },
            reason: match e {
                toplog_query::QueryError::Invalid(_, why) => why,
                other => other.to_string(),
            },
        })
    }
}
