//! JTP drivers: the server side ([`server::JtpService`], run by the server core per accepted
//! connection) and the client ([`client::Client`]: list, get, batch, watch).

pub mod client;
pub mod server;
