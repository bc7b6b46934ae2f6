//! A worker that runs out of file descriptors: accepting fails with EMFILE, the worker pauses
//! accepting instead of spinning on the error, keeps serving the connections it has, and
//! accepts again once descriptors are free. Its own test binary: it lowers the process's
//! descriptor limit, which would starve tests running beside it.

use std::{
    io::{Read, Write},
    net::TcpStream,
    rc::Rc,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use edgeplane_dataplane::{
    http::{Request, Response},
    listener::reuseport_listener,
    worker::{self, Reply, RequestContext, Service, WorkerCounters, WorkerOptions},
};

struct Hello;

impl Service for Hello {
    fn call(&self, _req: Request, _ctx: &RequestContext) -> Reply {
        Reply::Now(Response::text(200, "hello\n"))
    }
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

fn set_fd_limit(soft: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out pointer; then setting our own process's limit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut old);
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &new), 0);
    }
    old
}

fn get(s: &mut TcpStream) -> Option<u16> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .get(9..12)?
        .parse()
        .ok()
}

/// Where the parent test's worker listens, for the client process.
const ADDR_ENV: &str = "EDGEPLANE_FD_TEST_ADDR";
const CLIENTS: usize = 4;

/// The clients, in a process of their own (this process has no descriptors to spare): waits for
/// a byte on stdin, connects CLIENTS times, sends a request on each, prints each status.
#[test]
#[ignore = "started by out_of_descriptors_... as its client process"]
fn client_process() {
    let addr: std::net::SocketAddr = std::env::var(ADDR_ENV).unwrap().parse().unwrap();
    let mut go = [0u8; 1];
    std::io::stdin().read_exact(&mut go).unwrap();
    let mut conns: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    }
    for c in &mut conns {
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap_or(0);
        println!(
            "status:{}",
            String::from_utf8_lossy(buf.get(9..12.min(n)).unwrap_or(b""))
        );
    }
}

#[test]
fn out_of_descriptors_the_worker_pauses_accepting_keeps_serving_and_recovers() {
    // The limit is lowered before the worker starts: io_uring reads it when an accept is
    // armed, so a multishot accept armed earlier would keep the old one.
    let old = set_fd_limit(open_fds() + 64);
    let listener = reuseport_listener("127.0.0.1:0".parse().unwrap(), 128).unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = Arc::new(WorkerCounters::default());
    let mut opts = WorkerOptions::new(0, listener);
    opts.counters = counters.clone();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let factory: worker::ServiceFactory = Arc::new(|_| Ok(Rc::new(Hello) as Rc<dyn Service>));
    let thread = worker::spawn(opts, factory, rx).unwrap();
    let mut served = TcpStream::connect(addr).unwrap();
    served
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(get(&mut served), Some(200));

    // The clients' process, started while there are descriptors to start it with.
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "client_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ADDR_ENV, addr.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Fill this process's descriptor table: the worker's next accept has none.
    let mut filler = Vec::new();
    loop {
        // SAFETY: duplicating our own stdin descriptor; each is closed below.
        let fd = unsafe { libc::dup(0) };
        if fd < 0 {
            break;
        }
        filler.push(fd);
    }
    child.stdin.as_mut().unwrap().write_all(b"g").unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let errors = counters.accept_errors.load(Ordering::Relaxed);
    assert!(errors > 0, "the worker never failed an accept");
    // Paused and retried on a timer (100 ms): a handful of tries, not a spin.
    assert!(
        errors < 200,
        "{errors} failed accepts in about a second: a busy loop"
    );
    // The connection it already had is still served.
    assert_eq!(get(&mut served), Some(200));

    set_fd_limit(old.rlim_cur);
    for fd in filler {
        // SAFETY: closing a descriptor this test duplicated.
        unsafe { libc::close(fd) };
    }
    // The clients waiting in the backlog are accepted once descriptors are free again.
    let out = child.wait_with_output().unwrap();
    let statuses = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        statuses.matches("status:200").count(),
        CLIENTS,
        "{statuses}"
    );
    drop(served);
    stop.send(true).unwrap();
    thread.join().unwrap().unwrap();
}
