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

#[cfg(target_os = "linux")]
fn udp_loop(sock: UdpSocket, live: Arc<Live>, stop: Arc<AtomicBool>) {
    batch::run(sock, live, stop)
}

#[cfg(not(target_os = "linux"))]
fn udp_loop(sock: UdpSocket, live: Arc<Live>, stop: Arc<AtomicBool>) {
    simple_loop(sock, live, stop)
}

/// One packet per system call: the portable loop.
#[cfg_attr(target_os = "linux", allow(dead_code))]
fn simple_loop(sock: UdpSocket, live: Arc<Live>, stop: Arc<AtomicBool>) {
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

/// Linux: `recvmmsg`/`sendmmsg`, up to [`batch::BATCH`] packets per system call each way, as
/// gdnsd does: under load the kernel crossings, not the answers, are most of the cost.
#[cfg(target_os = "linux")]
mod batch {
    use std::mem::{size_of, zeroed};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use crate::dns::{answer, Transport};
    use crate::live::Live;

    pub const BATCH: usize = 32;
    /// Largest query read. DNS queries are far smaller; a longer datagram is cut (MSG_TRUNC)
    /// and dropped rather than answered from half a packet.
    const BUF: usize = 4096;

    fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
        match i32::from(ss.ss_family) {
            libc::AF_INET => {
                // SAFETY: ss_family says this storage holds a sockaddr_in, which it can contain.
                let sin =
                    unsafe { &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 =
                    unsafe { &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    pub fn run(sock: UdpSocket, live: Arc<Live>, stop: Arc<AtomicBool>) {
        let fd = sock.as_raw_fd();
        let mut bufs = vec![[0u8; BUF]; BATCH];
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { zeroed() };
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let mut outs: Vec<(usize, Vec<u8>)> = Vec::with_capacity(BATCH);
        let mut out_iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut out_msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        while !stop.load(Ordering::Relaxed) {
            for i in 0..BATCH {
                iovs[i].iov_base = bufs[i].as_mut_ptr().cast();
                iovs[i].iov_len = BUF;
                let h = &mut msgs[i].msg_hdr;
                h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_iov = &mut iovs[i];
                h.msg_iovlen = 1;
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
                h.msg_flags = 0;
                msgs[i].msg_len = 0;
            }
            // SAFETY: every msghdr points at live buffers of the stated lengths, owned above.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    msgs.as_mut_ptr(),
                    BATCH as u32,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if n <= 0 {
                // EAGAIN from the receive timeout (time to look at `stop`), EINTR, or an ICMP
                // error from an earlier send: none is fatal.
                continue;
            }
            outs.clear();
            for i in 0..n as usize {
                if msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    continue;
                }
                let Some(src) = to_socket_addr(&addrs[i]) else {
                    continue;
                };
                let len = msgs[i].msg_len as usize;
                if let Some(out) = answer(&live, &bufs[i][..len], src.ip(), Transport::Udp) {
                    outs.push((i, out));
                }
            }
            for (k, (i, out)) in outs.iter().enumerate() {
                out_iovs[k].iov_base = out.as_ptr() as *mut libc::c_void;
                out_iovs[k].iov_len = out.len();
                let h = &mut out_msgs[k].msg_hdr;
                h.msg_name = (&mut addrs[*i] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = msgs[*i].msg_hdr.msg_namelen;
                h.msg_iov = &mut out_iovs[k];
                h.msg_iovlen = 1;
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
                h.msg_flags = 0;
                out_msgs[k].msg_len = 0;
            }
            let mut sent = 0;
            while sent < outs.len() {
                // SAFETY: out_msgs[sent..] point at `outs` and `addrs`, alive until this loop ends.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        out_msgs[sent..].as_mut_ptr(),
                        (outs.len() - sent) as u32,
                        0,
                    )
                };
                if r <= 0 {
                    // A send that fails (e.g. a full buffer) loses this answer, like a dropped
                    // packet; the client retries. Skip it rather than spin.
                    sent += 1;
                } else {
                    sent += r as usize;
                }
            }
        }
    }
}
