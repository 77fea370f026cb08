//! Network namespaces made by a test, removed on drop (also when the test fails).

use std::{fs::File, os::unix::fs::MetadataExt, process::Command};

pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// A fresh namespace with its loopback up.
    pub fn new(tag: &str) -> Self {
        let name = format!("snt-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// The namespace's inode, as sentinel reports it in `interfaces[].netns`.
    pub fn inode(&self) -> u32 {
        std::fs::metadata(self.path()).expect("netns file").ino() as u32
    }

    /// Runs `f` on a thread that has entered this namespace (setns applies per thread).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = File::open(self.path()).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// (rx_packets, tx_packets) of `iface` in the calling thread's namespace, from /proc/net/dev.
pub fn proc_net_dev(iface: &str) -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")
        .expect("read /proc/thread-self/net/dev");
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == iface {
            let f: Vec<u64> = rest
                .split_ascii_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            return (f[1], f[9]);
        }
    }
    panic!("{iface} not in /proc/net/dev");
}

/// Sends `n` UDP datagrams of `size` bytes to a socket of this thread's loopback and reads
/// back whatever the receive buffer kept (reading keeps the buffer from filling).
pub fn udp_burst(n: u64, size: usize) {
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    rx.set_nonblocking(true).unwrap();
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    tx.connect(rx.local_addr().unwrap()).unwrap();
    let payload = vec![0x5a; size];
    let mut buf = vec![0u8; size.max(64)];
    for i in 0..n {
        tx.send(&payload).expect("send");
        if i % 64 == 0 {
            while rx.recv(&mut buf).is_ok() {}
        }
    }
    while rx.recv(&mut buf).is_ok() {}
}
