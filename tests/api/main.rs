//! The API server driven by the real kubectl (1.32) and by raw requests.

mod admission;
mod bad_input;
mod client;
mod dry_run;
mod explain;
mod informer;
mod kubectl;
mod protobuf;
mod python_client;
mod quota_race;
mod secrets_rotation;
mod server_side_apply;
mod service_ips;
