//! End-to-end tests: a real throwaway PostgreSQL (one per test binary), the real proxy
//! in-process on port 0, real clients. Each test has its own database and login role.

mod admin_http;
mod auth;
mod clients;
mod compat;
mod console;
mod console_ops;
mod console_users;
mod differential;
mod fairness;
mod hostile;
mod instances;
mod isolation;
mod large_messages;
mod leases;
mod lifecycle;
mod links;
mod live_catalog;
mod login_values;
mod observe;
mod pooling;
mod prelogin;
mod process;
mod production;
mod readiness;
mod relay;
mod reload;
mod rolling;
mod statements;
mod support;
mod tenants;
mod tls;
