//! Sockets for the DNS front end. UDP: one blocking thread per `SO_REUSEPORT` socket, so the
//! kernel spreads queries over cores and an answer is one `recv_from`, one [`super::answer`],
//! one `send_to`. TCP: hickory-server's listener (framing, idle timeouts, connection limits),
//! with a handler that runs the same protocol logic as UDP.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use socket2::{Domain, Protocol, Socket, Type};

use crate::live::Live;

use super::{answer, respond, Transport};

/// Bind `n` UDP sockets sharing one address with `SO_REUSEPORT`. A port of 0 picks a free
/// port for the first and reuses it for the rest (tests bind this way).
pub fn bind_udp(addr: SocketAddr, n: usize) -> io::Result<Vec<UdpSocket>> {
    let mut out: Vec<UdpSocket> = Vec::new();
    let mut target = addr;
    for _ in 0..n.max(1) {
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        sock.set_reuse_port(true)?;
        if addr.is_ipv6() {
            sock.set_only_v6(true)?;
        }
        // Bursts from one resolver should queue, not drop.
        let _ = sock.set_recv_buffer_size(4 << 20);
        sock.bind(&target.into())?;
        let sock: UdpSocket = sock.into();
        if out.is_empty() {
            target = sock.local_addr()?;
        }
        out.push(sock);
    }
    Ok(out)
}

/// The running UDP workers; dropping this does not stop them, [`UdpWorkers::stop`] does.
pub struct UdpWorkers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpWorkers {
    /// Start one worker thread per socket.
    pub fn start(sockets: Vec<UdpSocket>, live: Arc<Live>) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, sock) in sockets.into_iter().enumerate() {
            // Wake up now and then to notice `stop`; queries don't wait on this.
            sock.set_read_timeout(Some(Duration::from_millis(250)))?;
            let stop = stop.clone();
            let live = live.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || udp_loop(sock, live, stop))?,
            );
        }
        Ok(UdpWorkers { stop, threads })
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn udp_loop(sock: UdpSocket, live: Arc<Live>, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 65535];
    while !stop.load(Ordering::Relaxed) {
        let (len, src) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => {
                // ICMP errors from earlier sends surface here on Linux; they are not fatal.
                tracing::debug!(error = %e, "udp receive error");
                continue;
            }
        };
        if let Some(out) = answer(&live, &buf[..len], src.ip(), Transport::Udp) {
            if let Err(e) = sock.send_to(&out, src) {
                tracing::debug!(error = %e, %src, "udp send error");
            }
        }
    }
}

/// hickory-server handler for TCP: parse with hickory-proto, answer with [`respond`].
pub struct TcpHandler {
    pub live: Arc<Live>,
}

#[async_trait::async_trait]
impl RequestHandler for TcpHandler {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let snap = self.live.snapshot.load_full();
        let message = match Message::from_vec(request.as_slice()) {
            Ok(m) => m,
            Err(_) => {
                let builder = MessageResponseBuilder::from_message_request(request);
                let resp =
                    builder.error_msg(&request.metadata, hickory_proto::op::ResponseCode::FormErr);
                return send(&mut response_handle, resp, request).await;
            }
        };
        let out = respond(&self.live, &snap, &message, request.src().ip());
        self.live
            .metrics
            .query(true, out.metadata.response_code.low());
        let builder = MessageResponseBuilder::new(&request.queries, out.edns.as_ref());
        let resp = builder.build(
            out.metadata,
            out.answers.iter(),
            out.authorities.iter(),
            std::iter::empty(),
            out.additionals.iter(),
        );
        send(&mut response_handle, resp, request).await
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    resp: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match handle.send_response(resp).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, src = %request.src(), "tcp send error");
            let mut header = hickory_proto::op::Header {
                metadata: hickory_proto::op::Metadata::response_from_request(&request.metadata),
                counts: Default::default(),
            };
            header.metadata.response_code = hickory_proto::op::ResponseCode::ServFail;
            header.into()
        }
    }
}

/// Start serving TCP on already-bound listeners, inside the current tokio runtime.
pub fn start_tcp(
    listeners: Vec<tokio::net::TcpListener>,
    live: Arc<Live>,
    idle_timeout: Duration,
) -> Server<TcpHandler> {
    let mut server = Server::new(TcpHandler { live });
    for l in listeners {
        server.register_listener(l, idle_timeout, 65535);
    }
    server
}
