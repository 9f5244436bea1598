//! TEJ drivers: the server side ([`server::TejService`], run by the server core per accepted
//! connection) and the client ([`client::Client`]: send, get, list).

pub mod client;
pub mod server;
