//! A keep-alive HTTP/1.1 client on a Unix socket (the agent's API, or a baseline server).

use std::path::Path;

use http_body_util::{BodyExt as _, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;

pub type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One connection to `sock`, its driver spawned on the current runtime.
pub async fn connect(sock: &Path) -> Sender {
    let stream = tokio::net::UnixStream::connect(sock)
        .await
        .expect("connect");
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    tx
}

/// `GET path` on the connection, once it is ready.
pub async fn get(tx: &mut Sender, path: &str) -> hyper::Response<Incoming> {
    tx.ready().await.expect("connection ready");
    let req = hyper::Request::builder()
        .uri(path)
        .header("host", "fyvault")
        .body(Empty::<Bytes>::new())
        .unwrap();
    tx.send_request(req).await.expect("request")
}

/// `GET path` on the connection; the whole body.
pub async fn get_body(tx: &mut Sender, path: &str) -> Vec<u8> {
    get(tx, path)
        .await
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec()
}
