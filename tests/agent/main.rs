//! The node agent's HTTP API behind the API server, driven by the real
//! kubectl (1.32).

mod logs;
