//! A gateway that serves its own metrics: a supervisor with a guardian and
//! a few sessions running, and a minimal HTTP/1.1 server on the loopback
//! interface that answers `GET /metrics` with
//! [`Supervisor::metrics`]`().to_prometheus()` as
//! `text/plain; version=0.0.4` — what a Prometheus scrape job reads.
//!
//! ```text
//! sudo cargo run --example metrics_endpoint                 # a root procscope finds
//! sudo cargo run --example metrics_endpoint -- DIR          # or a cgroup2 directory
//! sudo cargo run --example metrics_endpoint -- DIR 9464     # on 127.0.0.1:9464
//! curl -s http://127.0.0.1:9464/metrics
//! ```
//!
//! Prints `listening on http://127.0.0.1:PORT/metrics` (port 0, the default,
//! lets the kernel choose), serves until SIGINT or SIGTERM, then shuts the
//! supervisor down and prints `ok`.

use std::io;
use std::time::Duration;

use procscope::{Command, Stdio, Supervisor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> io::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let mut builder = Supervisor::builder().guardian(true).grace(Duration::from_millis(500));
    if let Some(root) = args.next() {
        builder = builder.root(root);
    }
    let port: u16 = match args.next() {
        Some(p) => p.to_string_lossy().parse().map_err(|_| io::Error::other("the port must be a number"))?,
        None => 0,
    };
    let sup = builder.start().await?;

    // Sessions for the metrics to show: two servers (a shell and its sleep),
    // and a session let go with its server running (orphaned until a sweep).
    let mut sessions = Vec::new();
    for id in ["web-search", "files"] {
        let session = sup.session(id)?;
        session.spawn(Command::new("sh").args(["-c", "sleep 3600 & wait"]).stdin(Stdio::Null))?;
        sessions.push(session);
    }
    {
        let dropped = sup.session("abandoned")?;
        dropped.spawn(Command::new("sleep").arg("3600").stdin(Stdio::Null))?;
    }

    // Each shell has started its sleep before the first scrape (a slow
    // machine may take a moment).
    for session in &sessions {
        for _ in 0..1000 {
            if session.cgroup().unwrap().procs()?.len() >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}/metrics", listener.local_addr()?);
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let sup = sup.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, &sup).await {
                        eprintln!("a request failed: {e}");
                    }
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Ends the sessions still in use too (not leaks: they are in use), and
    // the abandoned one (a leak prevented).
    let report = sup.shutdown().await?;
    drop(sessions);
    println!("shut down: {report}");
    println!("ok");
    Ok(())
}

/// Answers one request: `GET /metrics` with the metrics, anything else with
/// an error status. One request per connection (`Connection: close`).
async fn serve(mut stream: TcpStream, sup: &Supervisor) -> io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    // The request line and headers, within 8 KiB and 5 s.
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        io::Result::Ok(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let line = String::from_utf8_lossy(&request).lines().next().unwrap_or("").to_owned();
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", sup.metrics().to_prometheus()),
        ("GET", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found; try /metrics\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
