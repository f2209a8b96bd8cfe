//! The floor of the framework: a Pingora 0.9.1 reverse proxy that does nothing but forward to
//! one upstream over keep-alive, on the same settings Tollgate uses (one worker thread, HTTP/1.1
//! upstream, the same upstream pool). `bench.py` runs it beside nginx and Tollgate, so the
//! table shows how much of the gap to nginx is Pingora's own and how much is Tollgate's work.
//!
//! `cargo build --release --example bare_pingora`, then
//! `target/release/examples/bare_pingora LISTEN_ADDR UPSTREAM_ADDR` (prints `LISTENING addr`).

// The same allocator as Tollgate, so the comparison is of the proxy work alone.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::Result;

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_pingora LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = http_proxy_service(&server.configuration, Bare { upstream });
    svc.add_tcp(&listen);
    server.add_service(svc);
    println!("LISTENING {listen}");
    server.run_forever();
}
