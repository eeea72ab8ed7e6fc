//! The scrape endpoint: a small HTTP/1.1 server on the collector's ring and
//! what it serves (`/`, `/metrics`, `/silent`, `/missing`).

mod endpoints;
mod missing;
mod page;
mod server;

pub use endpoints::Site;
pub use server::{HttpServer, Request, Response};
