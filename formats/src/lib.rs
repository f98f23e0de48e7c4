//! Outside formats that carry served requests, turned into toplog events by
//! the same validation as `POST /api/v1/requests` (one validator, whatever
//! the transport): OpenTelemetry traces (OTLP, protobuf or JSON), web
//! servers' access logs, and the route templates that stand for the paths
//! they name.

pub mod access_log;
pub mod otlp;
pub mod route;
