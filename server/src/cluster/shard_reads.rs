//! Reads of a shard held on another node (`ReadShard`): the question a
//! node asks, the part the replica answers (JSON, docs/cluster.md "Reads
//! across shards"), and the call. The merging is the query layer's
//! (`toplog_query::cross_shard`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toplog_engine::{Cell, Engine, Filters, Page, TimeRange};
use toplog_proto::raft_v1::ShardQuestion;
use toplog_proto::raft_v1::raft_client::RaftClient;
use toplog_query::{KeyCells, Part, SeriesCells, ShardKeys, TimeseriesQuery, TopK, TopKRow};
use toplog_replication::ShardId;
use toplog_types::{Event, Micros};

use super::ClusterSettings;

/// How long a node waits for another's part of an answer.
const READ_WAIT: Duration = Duration::from_secs(10);

/// What one shard is asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Question {
    /// Every key's cell ([`toplog_query::key_cells`]).
    KeyCells {
        q: TopK,
    },
    /// TPUT's phases over the keys' parts ([`toplog_query::StoreParts`]).
    Top {
        q: TopK,
        k: usize,
    },
    AtLeast {
        q: TopK,
        threshold: f64,
    },
    Parts {
        q: TopK,
        keys: Vec<String>,
    },
    /// Its own top K of single requests.
    Requests {
        q: TopK,
    },
    SeriesCells {
        q: TimeseriesQuery,
        keys: Vec<Option<String>>,
    },
    DayCells {
        first_day: Micros,
        days: u32,
    },
    Scan {
        range: TimeRange,
        filters: Filters,
        after: Option<String>,
        limit: usize,
    },
    Count {
        range: TimeRange,
        filters: Filters,
    },
    /// An aggregation job's rows over the shard.
    Aggregate {
        spec: toplog_query::AggregationSpec,
    },
    /// The leader the replica knows (answered even without one).
    Status,
}

/// A shard's part of an answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Answer {
    KeyCells {
        cells: Vec<(String, Cell)>,
        exact: bool,
        sources: Vec<String>,
    },
    Parts {
        parts: Vec<(String, f64, u64)>,
        exact: bool,
        sources: Vec<String>,
    },
    Requests {
        rows: Vec<TopKRow>,
        exact: bool,
        sources: Vec<String>,
    },
    SeriesCells {
        starts: Vec<Micros>,
        series: Vec<(Option<String>, Vec<Option<Cell>>)>,
        exact: bool,
        sources: Vec<String>,
        retained_from: Option<Micros>,
    },
    DayCells {
        cells: Vec<Cell>,
    },
    Page {
        events: Vec<Event>,
        next: Option<String>,
    },
    Count {
        count: u64,
    },
    Aggregate {
        rows: Vec<toplog_query::AggregateRow>,
    },
    Status {
        leader_id: Option<u64>,
    },
}

/// Key parts, whether the cells they came from were exact, and what they
/// were read from.
pub(crate) type KeyParts = (Vec<(String, Part)>, bool, Vec<&'static str>);

/// The sources a part may name, as the query layer names them.
const SOURCES: [&str; 4] = ["rollup_1d", "rollup_1h", "rollup_1m", "raw"];

fn source_names(sources: Vec<String>) -> Result<Vec<&'static str>, String> {
    (sources.iter())
        .map(|s| {
            SOURCES
                .iter()
                .find(|k| *k == s)
                .copied()
                .ok_or_else(|| format!("a part read from an unknown source `{s}`"))
        })
        .collect()
}

fn parts_of(parts: Vec<(String, Part)>, side: &toplog_query::StoreParts<'_>) -> Answer {
    let (exact, sources) = side.seen();
    Answer::Parts {
        parts: (parts.into_iter())
            .map(|(k, p)| (k, p.value, p.count))
            .collect(),
        exact,
        sources: sources.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Answers `question` from `engine` (a replica of the shard asked).
pub(crate) fn answer(engine: &Engine, question: Question) -> toplog_query::Result<Answer> {
    let side = |q: &TopK| toplog_query::StoreParts::new(engine, q);
    Ok(match question {
        Question::KeyCells { q } => {
            let c = toplog_query::key_cells(engine, &q)?;
            Answer::KeyCells {
                cells: c.cells,
                exact: c.exact,
                sources: c.sources.iter().map(|s| (*s).to_owned()).collect(),
            }
        }
        Question::Top { q, k } => {
            let s = side(&q)?;
            parts_of(s.top(k)?, &s)
        }
        Question::AtLeast { q, threshold } => {
            let s = side(&q)?;
            parts_of(s.at_least(threshold)?, &s)
        }
        Question::Parts { q, keys } => {
            let s = side(&q)?;
            parts_of(s.parts(&keys)?, &s)
        }
        Question::Requests { q } => {
            let a = toplog_query::top_k(engine, &q)?;
            Answer::Requests {
                rows: a.rows,
                exact: a.exact,
                sources: a.sources.iter().map(|s| (*s).to_owned()).collect(),
            }
        }
        Question::SeriesCells { q, keys } => {
            let c = toplog_query::series_cells(engine, &q, &keys)?;
            Answer::SeriesCells {
                starts: c.starts,
                series: c.series,
                exact: c.exact,
                sources: c.sources.iter().map(|s| (*s).to_owned()).collect(),
                retained_from: c.retained_from,
            }
        }
        Question::DayCells { first_day, days } => Answer::DayCells {
            cells: toplog_query::day_cells(engine, first_day, days)?,
        },
        Question::Scan {
            range,
            filters,
            after,
            limit,
        } => {
            let after = match after.as_deref() {
                Some(c) => Some(toplog_engine::Cursor::decode(c).ok_or_else(|| {
                    toplog_query::QueryError::Invalid("cursor", "not a cursor".into())
                })?),
                None => None,
            };
            let page = engine.scan(range, &filters, after.as_ref(), limit)?;
            Answer::Page {
                events: page.events,
                next: page.next.map(|c| c.encode()),
            }
        }
        Question::Count { range, filters } => Answer::Count {
            count: engine.count(range, &filters)?,
        },
        Question::Aggregate { spec } => Answer::Aggregate {
            rows: toplog_query::aggregate(engine, &spec)?,
        },
        // Answered by the caller, which knows the replica's Raft node.
        Question::Status => Answer::Status { leader_id: None },
    })
}

/// A part that is not what the question asked for.
fn unexpected(what: &str) -> String {
    format!("a shard answered something other than {what}")
}

impl Answer {
    pub(crate) fn into_key_cells(self) -> Result<KeyCells, String> {
        match self {
            Answer::KeyCells {
                cells,
                exact,
                sources,
            } => Ok(KeyCells {
                cells,
                exact,
                sources: source_names(sources)?,
            }),
            _ => Err(unexpected("key cells")),
        }
    }

    /// Key parts, and whether the cells they came from were exact, and
    /// what they were read from.
    pub(crate) fn into_parts(self) -> Result<KeyParts, String> {
        match self {
            Answer::Parts {
                parts,
                exact,
                sources,
            } => Ok((
                (parts.into_iter())
                    .map(|(k, value, count)| (k, Part { value, count }))
                    .collect(),
                exact,
                source_names(sources)?,
            )),
            _ => Err(unexpected("key parts")),
        }
    }

    pub(crate) fn into_requests(self) -> Result<toplog_query::TopKAnswer, String> {
        match self {
            Answer::Requests {
                rows,
                exact,
                sources,
            } => Ok(toplog_query::TopKAnswer {
                rows,
                exact,
                unlisted_max_count: 0,
                sources: source_names(sources)?,
                retained_from: None,
            }),
            _ => Err(unexpected("requests")),
        }
    }

    pub(crate) fn into_series_cells(self) -> Result<SeriesCells, String> {
        match self {
            Answer::SeriesCells {
                starts,
                series,
                exact,
                sources,
                retained_from,
            } => Ok(SeriesCells {
                starts,
                series,
                exact,
                sources: source_names(sources)?,
                retained_from,
            }),
            _ => Err(unexpected("series cells")),
        }
    }

    pub(crate) fn into_day_cells(self) -> Result<Vec<Cell>, String> {
        match self {
            Answer::DayCells { cells } => Ok(cells),
            _ => Err(unexpected("day cells")),
        }
    }

    pub(crate) fn into_page(self) -> Result<Page, String> {
        match self {
            Answer::Page { events, next } => Ok(Page {
                events,
                next: match next {
                    Some(c) => Some(
                        toplog_engine::Cursor::decode(&c)
                            .ok_or_else(|| "a shard answered a bad cursor".to_owned())?,
                    ),
                    None => None,
                },
            }),
            _ => Err(unexpected("a page")),
        }
    }

    pub(crate) fn into_aggregate(self) -> Result<Vec<toplog_query::AggregateRow>, String> {
        match self {
            Answer::Aggregate { rows } => Ok(rows),
            _ => Err(unexpected("aggregated rows")),
        }
    }

    pub(crate) fn into_count(self) -> Result<u64, String> {
        match self {
            Answer::Count { count } => Ok(count),
            _ => Err(unexpected("a count")),
        }
    }
}

/// Asks the replica of `shard` on the node at `url`; its part and the
/// index it had applied.
pub(crate) async fn ask(
    settings: &ClusterSettings,
    url: &str,
    shard: ShardId,
    question: &Question,
    strong: bool,
) -> Result<(Answer, u64), String> {
    let endpoint = settings.endpoint(url)?.timeout(READ_WAIT);
    let mut client = RaftClient::new(endpoint.connect_lazy());
    let mut request = tonic::Request::new(ShardQuestion {
        group: super::shards::group_of(shard),
        question: serde_json::to_vec(question).map_err(|e| e.to_string())?,
        strong,
    });
    if let Some(bearer) = settings.bearer()? {
        request.metadata_mut().insert("authorization", bearer);
    }
    let answer = client
        .read_shard(request)
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    let part = serde_json::from_slice(&answer.answer)
        .map_err(|e| format!("a shard's part that does not decode: {e}"))?;
    Ok((part, answer.applied_index))
}
