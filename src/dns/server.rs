//! Sockets for the DNS front end. UDP: one blocking thread per `SO_REUSEPORT` socket, so the
//! kernel spreads queries over cores; on Linux a thread takes up to 32 queries in one
//! `recvmmsg`, answers each with [`super::answer`] and sends the answers in one `sendmmsg`
//! (elsewhere one `recv_from`, one answer, one `send_to`). On a wildcard address each answer leaves from the
//! address its query was sent to (`IP_PKTINFO` / `IPV6_PKTINFO`, Linux only).
//!
//! TCP: Berth's own accept loop on tokio (RFC 7766 framing, pipelined queries answered in
//! order, [`super::answer`] as for UDP), with what an exposed server needs: an idle timeout,
//! caps on connections per listener and per client, and a pause in accepting, not a spin,
//! when the process runs out of file descriptors.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::live::Live;
use crate::supervise::{supervise_task, supervise_thread, Kind, Unit, Workers};

use super::{answer, Transport};

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
        #[cfg(target_os = "linux")]
        if addr.ip().is_unspecified() {
            // A wildcard socket must answer from the address each query was sent to, or
            // resolvers drop the answer: ask the kernel to tell us that address.
            batch::want_pktinfo(&sock, addr.is_ipv6())?;
        }
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
    /// Start one worker thread per socket. A worker that panics is logged, counted and run
    /// again on its socket by its thread ([`supervise_thread`]); the queries of the batch it
    /// was answering are lost, as if dropped on the way.
    pub fn start(sockets: Vec<UdpSocket>, live: Arc<Live>) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, sock) in sockets.into_iter().enumerate() {
            // Wake up now and then to notice `stop`; queries don't wait on this.
            sock.set_read_timeout(Some(Duration::from_millis(250)))?;
            let addr = sock.local_addr()?;
            let stop = stop.clone();
            let live = live.clone();
            let workers: Arc<Workers> = live.metrics.workers.clone();
            let unit = workers.register(Kind::DnsUdp, format!("dns-udp-{i} on {addr}"));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || {
                        supervise_thread(&workers, &unit, || udp_loop(&sock, &live, &stop, &unit))
                    })?,
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
fn udp_loop(sock: &UdpSocket, live: &Live, stop: &AtomicBool, unit: &Unit) {
    batch::run(sock, live, stop, unit)
}

#[cfg(not(target_os = "linux"))]
fn udp_loop(sock: &UdpSocket, live: &Live, stop: &AtomicBool, unit: &Unit) {
    simple_loop(sock, live, stop, unit)
}

/// One packet per system call: the portable loop. It answers from the address the kernel
/// picks, so on these systems listen on specific addresses, not a wildcard.
#[cfg_attr(target_os = "linux", allow(dead_code))]
fn simple_loop(sock: &UdpSocket, live: &Live, stop: &AtomicBool, unit: &Unit) {
    let mut buf = [0u8; 65535];
    let times = live.metrics.dns_udp_times();
    while !stop.load(Ordering::Relaxed) {
        let received = sock.recv_from(&mut buf);
        unit.injected_panic_point();
        let (len, src) = match received {
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
        let t0 = std::time::Instant::now();
        let out = answer(live, &buf[..len], src.ip(), Transport::Udp);
        crate::logs::log_query(src.ip(), "udp", &buf[..len], out.as_deref());
        if let Some(out) = out {
            times.observe(t0.elapsed());
            if let Err(e) = sock.send_to(&out, src) {
                tracing::debug!(error = %e, %src, "udp send error");
            }
        }
    }
}

/// Bind a TCP listener for DNS. An IPv6 address is IPv6 only, like the UDP side, so
/// `0.0.0.0:53` and `[::]:53` can both be listened on.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    tokio::net::TcpListener::from_std(sock.into())
}

/// What the TCP front end allows; `[dns]` in the config, see README.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// A connection with no complete query for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections per listener; more are accepted and closed at once.
    pub max_connections: usize,
    /// Open connections per client address (IPv4) or /64 (IPv6), per listener.
    pub max_connections_per_client: usize,
}

/// The running TCP listeners; [`TcpServer::stop`] ends them and their connections.
pub struct TcpServer {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TcpServer {
    /// Start serving on already-bound listeners, inside the current tokio runtime.
    pub fn start(
        listeners: Vec<tokio::net::TcpListener>,
        live: Arc<Live>,
        limits: TcpLimits,
    ) -> TcpServer {
        let (stop, _) = tokio::sync::watch::channel(false);
        let workers: Arc<Workers> = live.metrics.workers.clone();
        let tasks = listeners
            .into_iter()
            .map(|l| {
                let name = match l.local_addr() {
                    Ok(a) => format!("dns-tcp on {a}"),
                    Err(_) => "dns-tcp".to_string(),
                };
                let unit = workers.register(Kind::DnsTcp, name);
                // Shared with the accept loop, so a replaced loop accepts on the same socket
                // and counts the same connections.
                let listener = Arc::new(l);
                let slots = Arc::new(Slots::new(limits));
                let live = live.clone();
                let stop = stop.subscribe();
                let u = unit.clone();
                tokio::spawn(supervise_task(workers.clone(), unit, move || {
                    accept_loop(
                        listener.clone(),
                        live.clone(),
                        limits,
                        slots.clone(),
                        stop.clone(),
                        u.clone(),
                    )
                }))
            })
            .collect();
        TcpServer { stop, tasks }
    }

    /// Stop accepting, close every connection, and wait until that is done.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The connections open on one listener, in total and per client.
struct Slots {
    limits: TcpLimits,
    /// (total, per client key); one lock, taken once per accept and once per close.
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open connection's place in its [`Slots`]; given back on drop, however the task ends.
struct Slot {
    slots: Arc<Slots>,
    key: IpAddr,
}

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Listener,
    Client,
}

impl Slots {
    fn new(limits: TcpLimits) -> Slots {
        Slots {
            limits,
            open: Mutex::new((0, HashMap::new())),
        }
    }

    fn take(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refused> {
        let key = client_key(peer);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= self.limits.max_connections {
            return Err(Refused::Listener);
        }
        let n = open.1.entry(key).or_insert(0);
        if *n >= self.limits.max_connections_per_client {
            return Err(Refused::Client);
        }
        *n += 1;
        open.0 += 1;
        Ok(Slot {
            slots: self.clone(),
            key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.1.remove(&self.key);
            }
        }
    }
}

/// What "one client" is for the per-client cap: an IPv4 address, or an IPv6 /64 (one site
/// gets a /64 or more, so counting single IPv6 addresses would cap nothing).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(Ipv6Addr::from(o))
            }
        },
    }
}

/// Out of descriptors (or kernel memory): accepting again at once fails again at once.
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Longest pause in accepting after running out of descriptors.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Least time between two warnings about running out of descriptors.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Accept connections until `stop`; a connection's task lives in this loop's set, so the
/// loop sees each one end (and count its panic), and ending the loop ends them.
async fn accept_loop(
    listener: Arc<tokio::net::TcpListener>,
    live: Arc<Live>,
    limits: TcpLimits,
    slots: Arc<Slots>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    unit: Arc<Unit>,
) {
    let mut conns = tokio::task::JoinSet::new();
    let mut backoff = Duration::ZERO;
    // When the shortage was last logged: once per episode is enough, and an episode that
    // frees one descriptor at a time would otherwise log at every accept.
    let mut warned: Option<tokio::time::Instant> = None;
    while !*stop.borrow_and_update() {
        tokio::select! {
            _ = stop.changed() => break,
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        // The connection is lost (its client retries); the listener goes on.
                        let who = format!("{} connection", unit.name);
                        live.metrics.workers.panicked(Kind::DnsTcp, &who, &*e.into_panic());
                    }
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    unit.injected_panic_point();
                    backoff = Duration::ZERO;
                    match slots.take(peer.ip()) {
                        Ok(slot) => {
                            conns.spawn(connection(stream, peer, live.clone(), limits.idle_timeout, slot));
                        }
                        Err(why) => {
                            // Closing at once tells the client to go elsewhere or retry, where
                            // leaving it in the backlog would only make it wait.
                            live.metrics.dns_tcp_refused.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, ?why, "DNS TCP connection refused: too many open");
                            drop(stream);
                        }
                    }
                }
                Err(e) if out_of_descriptors(&e) => {
                    // The connection stays in the kernel's backlog; retrying now would spin.
                    // Pause, longer each time, until a connection closes and frees a descriptor.
                    let now = tokio::time::Instant::now();
                    if warned.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
                        warned = Some(now);
                        tracing::warn!(error = %e, "DNS TCP accept: out of file descriptors, pausing accepts (raise ulimit -n or lower dns.tcp_max_connections)");
                    }
                    live.metrics.dns_tcp_accept_pauses.fetch_add(1, Ordering::Relaxed);
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_BACKOFF);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => break,
                    }
                }
                Err(e) => {
                    // ECONNABORTED and the like: that one connection's problem.
                    tracing::debug!(error = %e, "DNS TCP accept error");
                }
            }
        }
    }
    conns.shutdown().await;
}

/// One TCP connection (RFC 7766): 2-octet length, message; any number of queries, answered
/// in order. Pipelined queries already received are answered with one write.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    live: Arc<Live>,
    idle: Duration,
    _slot: Slot,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut out: Vec<u8> = Vec::new();
    loop {
        // The timeout covers waiting for a query and reading it whole, so trickling a query
        // one octet at a time does not hold the connection longer than an idle one.
        let query = tokio::time::timeout(idle, async {
            let len = rd.read_u16().await?;
            let mut q = vec![0u8; usize::from(len)];
            rd.read_exact(&mut q).await?;
            io::Result::Ok(q)
        })
        .await;
        let query = match query {
            Ok(Ok(q)) => q,
            // Closed by the client (between or inside a message), an error, or idle.
            Ok(Err(_)) | Err(_) => break,
        };
        let t0 = std::time::Instant::now();
        let a = answer(&live, &query, peer.ip(), Transport::Tcp);
        crate::logs::log_query(peer.ip(), "tcp", &query, a.as_deref());
        if let Some(a) = a {
            live.metrics.dns_tcp_times.observe(t0.elapsed());
            let a = match u16::try_from(a.len()) {
                Ok(_) => a,
                // Not expressible in TCP framing; the client learns it failed.
                Err(_) => servfail(&query),
            };
            out.extend_from_slice(&(a.len() as u16).to_be_bytes());
            out.extend_from_slice(&a);
        }
        if !whole_message_buffered(rd.buffer()) && !out.is_empty() {
            match tokio::time::timeout(idle, wr.write_all(&out)).await {
                Ok(Ok(())) => out.clear(),
                // A client that does not read its answers is as good as idle.
                _ => break,
            }
        }
    }
}

/// Whether `buf` starts with a complete length-prefixed message (another pipelined query).
fn whole_message_buffered(buf: &[u8]) -> bool {
    buf.len() >= 2 && buf.len() >= 2 + usize::from(u16::from_be_bytes([buf[0], buf[1]]))
}

/// SERVFAIL for `query` (at least 12 octets: [`answer`] answered it): its ID, opcode and RD,
/// no records.
fn servfail(query: &[u8]) -> Vec<u8> {
    let mut out = query[..12].to_vec();
    out[2] = 0x80 | (query[2] & 0x79);
    out[3] = 2;
    out[4..12].fill(0);
    out
}

/// Linux: `recvmmsg`/`sendmmsg`, up to [`batch::BATCH`] packets per system call each way, as
/// gdnsd does: under load the kernel crossings, not the answers, are most of the cost.
#[cfg(target_os = "linux")]
mod batch {
    use std::mem::{size_of, zeroed};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::dns::{answer_batch, Clock};
    use crate::live::Live;
    use crate::metrics::hist::BatchTimer;
    use crate::supervise::Unit;

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

    /// Room for one `IP_PKTINFO` or `IPV6_PKTINFO` control message (40 bytes on 64-bit
    /// Linux), aligned as `cmsghdr` wants.
    #[repr(C, align(8))]
    #[derive(Clone, Copy)]
    struct Ctrl([u8; 64]);

    /// Have the kernel attach each datagram's destination address (`IP_PKTINFO` /
    /// `IPV6_RECVPKTINFO`), which [`reply_pktinfo`] turns into the reply's source.
    pub fn want_pktinfo(sock: &socket2::Socket, v6: bool) -> std::io::Result<()> {
        let (level, name) = if v6 {
            (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
        } else {
            (libc::IPPROTO_IP, libc::IP_PKTINFO)
        };
        set_int_option(sock.as_raw_fd(), level, name, 1)
    }

    /// `setsockopt` of an `int` option.
    fn set_int_option(
        fd: std::os::fd::RawFd,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> std::io::Result<()> {
        // SAFETY: the caller's socket, and an int option of the stated size.
        let r = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// From a received message's control data, the control message that makes the reply
    /// leave from the address the query was sent to; its length, or 0 when the kernel gave
    /// none (a socket bound to one address needs none: the kernel picks that address).
    ///
    /// # Safety
    /// `h` is a header `recvmmsg` filled in, whose control buffer is still alive.
    unsafe fn reply_pktinfo(h: &libc::msghdr, out: &mut Ctrl) -> usize {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            let o = out.0.as_mut_ptr().cast::<libc::cmsghdr>();
            if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                let got: libc::in_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>());
                // The source is spec_dst; interface 0 lets routing pick the way out, as
                // gdnsd does (the query's interface is not always the reply's).
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: got.ipi_addr,
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                let size = size_of::<libc::in_pktinfo>() as libc::c_uint;
                (*o).cmsg_len = libc::CMSG_LEN(size) as _;
                (*o).cmsg_level = libc::IPPROTO_IP;
                (*o).cmsg_type = libc::IP_PKTINFO;
                std::ptr::write_unaligned(libc::CMSG_DATA(o).cast::<libc::in_pktinfo>(), info);
                return libc::CMSG_SPACE(size) as usize;
            }
            if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                // The interface stays: a link-local destination means nothing without it.
                let info: libc::in6_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>());
                let size = size_of::<libc::in6_pktinfo>() as libc::c_uint;
                (*o).cmsg_len = libc::CMSG_LEN(size) as _;
                (*o).cmsg_level = libc::IPPROTO_IPV6;
                (*o).cmsg_type = libc::IPV6_PKTINFO;
                std::ptr::write_unaligned(libc::CMSG_DATA(o).cast::<libc::in6_pktinfo>(), info);
                return libc::CMSG_SPACE(size) as usize;
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
        0
    }

    /// The largest DNS payload that leaves as one packet on a 1500-octet link, over IPv6
    /// (1500 - 40 - 8) and so over IPv4.
    pub const UNFRAGMENTED_PAYLOAD: u16 = 1452;

    /// Whether answers leave with DF set and are never fragmented by this host (RFC 9715:
    /// fragments are how forged DNS answers get in). Linux's `IP_PMTUDISC_PROBE` and
    /// `IPV6_PMTUDISC_PROBE`: DF set, and a "fragmentation needed" ICMP message (easily
    /// forged) no longer makes later answers fragment. The kernel default (`_WANT`) sets DF
    /// too, but fragments after such a message. Followed on every snapshot: on only while
    /// `dns.max_udp_payload` fits an unfragmented packet, so a larger configured limit
    /// still fragments rather than losing the answer.
    pub struct DontFragment {
        fd: std::os::fd::RawFd,
        v6: bool,
        on: Option<bool>,
    }

    impl DontFragment {
        pub fn new(sock: &UdpSocket) -> DontFragment {
            DontFragment {
                fd: sock.as_raw_fd(),
                v6: sock.local_addr().is_ok_and(|a| a.is_ipv6()),
                on: None,
            }
        }

        /// Set the socket's mode for this `max_udp_payload`, if it changed.
        pub fn follow(&mut self, max_udp_payload: u16) {
            let want = max_udp_payload <= UNFRAGMENTED_PAYLOAD;
            if self.on == Some(want) {
                return;
            }
            self.on = Some(want);
            if let Err(e) = self.set(want) {
                tracing::warn!(error = %e, "cannot set the DF mode of a DNS UDP socket");
            }
        }

        fn set(&self, on: bool) -> std::io::Result<()> {
            let (level, name, probe, want) = if self.v6 {
                let v6 = (libc::IPV6_PMTUDISC_PROBE, libc::IPV6_PMTUDISC_WANT);
                (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, v6.0, v6.1)
            } else {
                let v4 = (libc::IP_PMTUDISC_PROBE, libc::IP_PMTUDISC_WANT);
                (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, v4.0, v4.1)
            };
            let value = if on { probe } else { want };
            set_int_option(self.fd, level, name, value)
        }
    }

    /// Send every prepared answer, in as few `sendmmsg` calls as the kernel allows.
    fn send_all(fd: std::os::fd::RawFd, msgs: &mut [libc::mmsghdr]) {
        let mut sent = 0;
        while sent < msgs.len() {
            // SAFETY: msgs[sent..] point at answers and addresses the caller keeps alive.
            let r = unsafe {
                libc::sendmmsg(fd, msgs[sent..].as_mut_ptr(), (msgs.len() - sent) as u32, 0)
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

    /// Answer the queries `recvmmsg` put in the first `received.len()` slots into their
    /// `out_bufs`; `outs` gets the slots that have an answer to send.
    fn answer_received(
        live: &Live,
        df: &mut DontFragment,
        received: &[libc::mmsghdr],
        addrs: &[libc::sockaddr_storage],
        bufs: &[[u8; BUF]],
        out_bufs: &mut [Vec<u8>],
        outs: &mut Vec<usize>,
    ) {
        outs.clear();
        // Once per batch, not per query: the snapshot (a reload lands at the next batch) and
        // the clocks (the batch arrived at one instant).
        let snap = live.snapshot.load();
        df.follow(snap.config.dns.max_udp_payload);
        let mut clock = Clock::new(None);
        for (i, m) in received.iter().enumerate() {
            if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                continue;
            }
            let Some(src) = to_socket_addr(&addrs[i]) else {
                continue;
            };
            let (query, out) = (&bufs[i][..m.msg_len as usize], &mut out_bufs[i]);
            let answered = answer_batch(live, &snap, &mut clock, query, src.ip(), out);
            crate::logs::log_query(src.ip(), "udp", query, answered.then_some(out.as_slice()));
            if answered {
                outs.push(i);
            }
        }
    }

    /// The headers of the answers to send: one per entry of `outs` (a batch slot whose
    /// answer is in `out_bufs`), to the address its query came from.
    struct Replies<'a> {
        iovs: &'a mut [libc::iovec; BATCH],
        msgs: &'a mut [libc::mmsghdr; BATCH],
        ctrls: &'a mut [Ctrl; BATCH],
    }

    impl Replies<'_> {
        fn fill(
            self,
            outs: &[usize],
            out_bufs: &[Vec<u8>],
            addrs: &mut [libc::sockaddr_storage; BATCH],
            received: &[libc::mmsghdr; BATCH],
        ) {
            for (k, i) in outs.iter().enumerate() {
                let out = &out_bufs[*i];
                self.iovs[k].iov_base = out.as_ptr() as *mut libc::c_void;
                self.iovs[k].iov_len = out.len();
                let h = &mut self.msgs[k].msg_hdr;
                h.msg_name = (&mut addrs[*i] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = received[*i].msg_hdr.msg_namelen;
                h.msg_iov = &mut self.iovs[k];
                h.msg_iovlen = 1;
                // SAFETY: received[*i] was filled in by recvmmsg; its control buffer is alive.
                let len = unsafe { reply_pktinfo(&received[*i].msg_hdr, &mut self.ctrls[k]) };
                if len == 0 {
                    h.msg_control = std::ptr::null_mut();
                } else {
                    h.msg_control = self.ctrls[k].0.as_mut_ptr().cast();
                }
                h.msg_controllen = len as _;
                h.msg_flags = 0;
                self.msgs[k].msg_len = 0;
            }
        }
    }

    /// One receive batch in this many is timed for `berth_dns_answer_duration_seconds`: two
    /// clock reads cost about 1-4% of answering one query on a loaded machine, so timing
    /// every batch of one would cost that much; sampled, it is well under 1%.
    const TIMED_EVERY: u32 = 16;

    pub fn run(sock: &UdpSocket, live: &Live, stop: &AtomicBool, unit: &Unit) {
        let fd = sock.as_raw_fd();
        // Only a wildcard socket asked for the destination addresses (see `bind_udp`); the
        // others skip the control data both ways.
        let pktinfo = sock.local_addr().is_ok_and(|a| a.ip().is_unspecified());
        let ctrl_len = if pktinfo { size_of::<Ctrl>() } else { 0 };
        let mut bufs = vec![[0u8; BUF]; BATCH];
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { zeroed() };
        // SAFETY: as above (plain C struct, pointers null until filled in).
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let mut ctrls = [Ctrl([0; 64]); BATCH];
        // One answer buffer per batch slot, kept across batches: answers allocate nothing.
        let mut out_bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(512)).collect();
        // For each answer to send: the batch slot of its query (and of its buffer).
        let mut outs: Vec<usize> = Vec::with_capacity(BATCH);
        // SAFETY: as above.
        let mut out_iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut out_msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        let mut out_ctrls = [Ctrl([0; 64]); BATCH];
        // One batch in TIMED_EVERY feeds this thread's answer-time histogram (see its doc).
        let mut timer = BatchTimer::new(live.metrics.dns_udp_times(), TIMED_EVERY);
        let mut df = DontFragment::new(sock);
        df.follow(live.snapshot.load().config.dns.max_udp_payload);
        for i in 0..BATCH {
            iovs[i].iov_base = bufs[i].as_mut_ptr().cast();
            iovs[i].iov_len = BUF;
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = if pktinfo {
                ctrls[i].0.as_mut_ptr().cast()
            } else {
                std::ptr::null_mut()
            };
        }
        // Headers the last recvmmsg filled in: the kernel wrote their lengths and flags.
        let mut used = BATCH;
        while !stop.load(Ordering::Relaxed) {
            // Only those need their lengths back (the pointers above do not change): at low
            // load a batch is one query, and resetting all 32 cost more than answering it.
            for m in &mut msgs[..used] {
                m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                m.msg_hdr.msg_controllen = ctrl_len as _;
                m.msg_hdr.msg_flags = 0;
                m.msg_len = 0;
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
            unit.injected_panic_point();
            if n <= 0 {
                // Receive timeout (time to look at `stop`), EINTR, an earlier send's ICMP: not fatal.
                used = BATCH;
                continue;
            }
            used = n as usize;
            let t0 = timer.start();
            let received = &msgs[..n as usize];
            answer_received(
                live,
                &mut df,
                received,
                &addrs,
                &bufs,
                &mut out_bufs,
                &mut outs,
            );
            let replies = Replies {
                iovs: &mut out_iovs,
                msgs: &mut out_msgs,
                ctrls: &mut out_ctrls,
            };
            replies.fill(&outs, &out_bufs, &mut addrs, &msgs);
            send_all(fd, &mut out_msgs[..outs.len()]);
            timer.done(t0, outs.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_an_ipv4_address_or_an_ipv6_64() {
        let key = |s: &str| client_key(s.parse().expect("literal")).to_string();
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }

    #[test]
    fn slots_are_capped_per_client_and_in_total_and_given_back_on_drop() {
        let slots = Arc::new(Slots::new(TcpLimits {
            idle_timeout: Duration::from_secs(1),
            max_connections: 3,
            max_connections_per_client: 2,
        }));
        let a: IpAddr = "192.0.2.1".parse().expect("literal");
        let b: IpAddr = "192.0.2.2".parse().expect("literal");
        let a1 = slots.take(a).expect("first");
        let _a2 = slots.take(a).expect("second");
        assert_eq!(slots.take(a).err(), Some(Refused::Client));
        let _b1 = slots.take(b).expect("another client");
        assert_eq!(slots.take(b).err(), Some(Refused::Listener));
        drop(a1);
        let _b2 = slots.take(b).expect("a slot given back");
    }

    #[test]
    fn pipelined_messages_are_seen_whole_or_not_at_all() {
        assert!(!whole_message_buffered(&[]));
        assert!(!whole_message_buffered(&[0]));
        assert!(!whole_message_buffered(&[0, 3, 1, 2]));
        assert!(whole_message_buffered(&[0, 3, 1, 2, 3]));
        assert!(whole_message_buffered(&[0, 0]));
    }

    /// The mode follows `max_udp_payload` both ways, as a reload changes it.
    #[cfg(target_os = "linux")]
    #[test]
    fn answers_are_unfragmented_while_the_payload_limit_fits_a_packet() {
        use std::os::fd::AsRawFd;
        let mode = |sock: &UdpSocket, v6: bool| {
            let (level, name) = if v6 {
                (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER)
            } else {
                (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER)
            };
            let mut value: libc::c_int = -1;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: a valid socket, and an int option with its length.
            let r = unsafe {
                libc::getsockopt(
                    sock.as_raw_fd(),
                    level,
                    name,
                    (&mut value as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
            value
        };
        for (addr, v6) in [("127.0.0.1:0", false), ("[::1]:0", true)] {
            let Ok(sock) = UdpSocket::bind(addr) else {
                continue; // no IPv6 on this host
            };
            let mut df = batch::DontFragment::new(&sock);
            df.follow(1232);
            assert_eq!(mode(&sock, v6), libc::IP_PMTUDISC_PROBE, "{addr} at 1232");
            df.follow(4096);
            assert_eq!(mode(&sock, v6), libc::IP_PMTUDISC_WANT, "{addr} at 4096");
            df.follow(batch::UNFRAGMENTED_PAYLOAD);
            assert_eq!(mode(&sock, v6), libc::IP_PMTUDISC_PROBE, "{addr} at 1452");
        }
    }

    #[test]
    fn servfail_keeps_id_opcode_and_rd_and_drops_the_records() {
        let q = [0xab, 0xcd, 0x29, 0x20, 0, 1, 0, 0, 0, 0, 0, 1, 0xff];
        assert_eq!(
            servfail(&q),
            vec![0xab, 0xcd, 0xa9, 2, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }
}
