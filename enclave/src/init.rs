//! The enclave image's `/init`: what runs before the wallet when this binary is PID 1 inside an
//! enclave image file (EIF, built by `scripts/build-eif.sh`), and the boot handshake with the
//! parent instance.
//!
//! The EIF puts this binary at `/init` in its app ramdisk (measured into PCR2) and the kernel
//! modules the kernel needs, with `lib/modules/modules.load`, in its bootstrap ramdisk (PCR1).
//! As PID 1 the binary:
//!
//! 1. mounts devtmpfs on `/dev`, proc on `/proc` and sysfs on `/sys` ([`mount_filesystems`]);
//! 2. loads the modules `lib/modules/modules.load` lists, in order ([`load_modules`]); a line is
//!    `FILE [PREFIX]`, and the kernel command line's words `PREFIX.NAME=VALUE` become the
//!    module's parameters `NAME=VALUE`, as `modprobe` passes them;
//! 3. reads `wallet.parent_cid=N` from the kernel command line ([`parent_cid`]; default
//!    [`DEFAULT_PARENT_CID`], the parent instance on Nitro);
//! 4. sends the Nitro heartbeat ([`heartbeat`]: byte [`HEARTBEAT`] to the parent's port
//!    [`HEARTBEAT_PORT`], echoed back), which `nitro-cli run-enclave` waits for;
//! 5. asks the parent for its arguments ([`fetch_boot_config`], port [`BOOT_CONFIG_PORT`]),
//!    which `main` then parses exactly as it parses a command line.
//!
//! The parent is untrusted, and so is everything here that it supplies: the arguments get the
//! checks command-line flags get (a production build refuses `--simulated`; the KMS key and
//! service id the enclave ends up with are in its attestation, which `walletctl init` checks),
//! and the kernel command line (measured into PCR0/PCR1 on Nitro; QEMU's `-append` tail and the
//! virtio-mmio device list it adds are not) says where the parent is and gives module
//! parameters. None of it reaches a key.

use std::{
    fmt,
    io::{self, Read, Write},
    time::{Duration, Instant},
};

use zeroize::Zeroizing;

use crate::hoststorage::HostAddress;

/// Where the parent instance is on vsock when the command line does not say: 3, the parent of
/// a Nitro enclave (AWS's `VMADDR_CID_PARENT`).
pub const DEFAULT_PARENT_CID: u32 = crate::hoststorage::DEFAULT_PARENT_CID;
/// The vsock port the parent's `nitro-cli run-enclave` listens on for the boot heartbeat (AWS
/// Nitro Enclaves CLI, `ENCLAVE_READY_VSOCK_PORT`).
pub const HEARTBEAT_PORT: u32 = 9000;
/// The heartbeat byte, sent and echoed (AWS Nitro Enclaves CLI, `HEART_BEAT`).
pub const HEARTBEAT: u8 = 0xb7;
/// The vsock port on the parent that serves the enclave's arguments (`wallet-gateway
/// --serve-boot vsock:7001`).
pub const BOOT_CONFIG_PORT: u32 = 7001;
/// Largest boot configuration accepted, bytes.
pub const MAX_BOOT_CONFIG: usize = 64 * 1024;
/// Environment variables the boot configuration may set for the wallet: the AWS credentials
/// its KMS calls are signed with, and the log filter.
pub const BOOT_ENV: &[&str] =
    &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RUST_LOG"];
/// How long [`fetch_boot_config`] keeps trying to reach the parent.
pub const BOOT_CONFIG_WAIT: Duration = Duration::from_secs(60);

/// Whether this process is the enclave image's `/init`: process id 1, started as `/init`, and
/// `/proc` not mounted yet. The kernel starts an initramfs's `/init` exactly so; a container's
/// first process (also PID 1) has `/proc` mounted by its runtime and another name, so the binary
/// run in a container, on a developer's machine or in CI never mounts, loads modules, opens vsock
/// or reboots: it parses its command line as usual.
#[must_use]
pub fn is_image_init(pid: u32, argv0: Option<&std::ffi::OsStr>, proc_mounted: bool) -> bool {
    pid == 1 && argv0 == Some(std::ffi::OsStr::new("/init")) && !proc_mounted
}

/// What the parent sent: the wallet's arguments and environment. Values may hold credentials:
/// they are wiped on drop and never printed (`Debug` shows names only).
pub struct BootConfig {
    /// Arguments, as on a command line (without the program name).
    pub args: Vec<String>,
    env: Vec<(String, Zeroizing<String>)>,
}

impl BootConfig {
    /// The value of environment variable `name`, if the parent set it (and it is not empty).
    #[must_use]
    pub fn env(&self, name: &str) -> Option<String> {
        self.env.iter().find(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| String::clone(v))
    }

    /// Parses the parent's answer: a JSON object `{"args": [string, ...], "env": {name: string}}`
    /// (`env` optional; names from [`BOOT_ENV`] only).
    ///
    /// # Errors
    /// A sentence saying what is wrong: not JSON of that shape, an unknown key or environment
    /// variable, or larger than [`MAX_BOOT_CONFIG`].
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wire {
            args: Vec<String>,
            #[serde(default)]
            env: std::collections::BTreeMap<String, String>,
        }
        if bytes.len() > MAX_BOOT_CONFIG {
            return Err(format!("the boot configuration is larger than {MAX_BOOT_CONFIG} bytes"));
        }
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| {
            format!("the boot configuration is not {{\"args\": [...], \"env\": {{...}}}}: {e}")
        })?;
        let mut env = Vec::new();
        for (name, value) in wire.env {
            let value = Zeroizing::new(value);
            if !BOOT_ENV.contains(&name.as_str()) {
                return Err(format!(
                    "the boot configuration sets {name:?}; only {} may be set",
                    BOOT_ENV.join(", ")
                ));
            }
            env.push((name, value));
        }
        Ok(Self { args: wire.args, env })
    }
}

impl fmt::Debug for BootConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootConfig")
            .field("args", &self.args)
            .field("env", &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .finish()
    }
}

/// `wallet.parent_cid=N` from a kernel command line, else [`DEFAULT_PARENT_CID`].
///
/// # Errors
/// When the word is there but `N` is not a number.
pub fn parent_cid(cmdline: &str) -> Result<u32, String> {
    match cmdline.split_ascii_whitespace().rev().find_map(|w| w.strip_prefix("wallet.parent_cid="))
    {
        None => Ok(DEFAULT_PARENT_CID),
        Some(v) => v.parse().map_err(|_| format!("wallet.parent_cid={v} is not a number")),
    }
}

/// The parameters for a module whose command-line prefix is `prefix`: every word
/// `PREFIX.NAME=VALUE` (or `PREFIX.NAME`) of `cmdline` as `NAME=VALUE`, space-separated, in order.
#[must_use]
pub fn module_params(cmdline: &str, prefix: &str) -> String {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix(prefix)?.strip_prefix('.'))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line of `modules.load`: the module file and the command-line prefix of its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLine {
    /// File name in the modules directory (no `/`).
    pub file: String,
    /// Command-line prefix (`virtio_mmio` for `virtio_mmio.device=...`), if any.
    pub prefix: Option<String>,
}

/// Parses `modules.load`: one module per line, `FILE [PREFIX]`; blank lines and `#` comments
/// are skipped.
///
/// # Errors
/// A line with more than two words, or a file name that is not a plain `.ko` file name.
pub fn parse_modules_load(text: &str) -> Result<Vec<ModuleLine>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        let bad = || format!("modules.load line {}: {line:?}: expected FILE.ko [PREFIX]", n + 1);
        let (file, prefix) = match words.as_slice() {
            [file] => (*file, None),
            [file, prefix] => (*file, Some((*prefix).to_owned())),
            _ => return Err(bad()),
        };
        if file.contains('/') || file.starts_with('.') || !file.ends_with(".ko") {
            return Err(bad());
        }
        out.push(ModuleLine { file: file.to_owned(), prefix });
    }
    Ok(out)
}

/// Sends the boot heartbeat to `addr` and waits for its echo (two seconds at most each way).
///
/// # Errors
/// When the parent does not answer: `nitro-cli` then reports the enclave as failed to boot.
pub fn heartbeat(addr: &HostAddress) -> io::Result<()> {
    let mut stream = crate::platform::boot::stream_to(addr, Duration::from_secs(2))?;
    stream.write_all(&[HEARTBEAT])?;
    let mut echo = [0u8; 1];
    stream.read_exact(&mut echo)?;
    if echo[0] != HEARTBEAT {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the heartbeat echo is wrong"));
    }
    Ok(())
}

/// Asks the parent at `addr` for the boot configuration: connects (retrying: the parent may
/// start its side after the enclave), reads to end of stream (at most [`MAX_BOOT_CONFIG`]
/// bytes) and parses it, all within `wait`.
///
/// # Errors
/// A sentence: unreachable within `wait`, a broken or oversized answer, or a bad configuration.
pub fn fetch_boot_config(addr: &HostAddress, wait: Duration) -> Result<BootConfig, String> {
    let deadline = Instant::now() + wait;
    let mut stream = loop {
        match crate::platform::boot::stream_to(addr, Duration::from_secs(5)) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "no boot configuration from the parent at {addr} within {}s: {e} (run \
                     wallet-gateway --serve-boot on the parent instance)",
                    wait.as_secs()
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    // Read to end of stream within the same deadline, however slowly the parent sends.
    let mut buf = Zeroizing::new(Vec::with_capacity(4096));
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "the boot configuration from {addr} did not arrive within {}s",
                wait.as_secs()
            ));
        }
        let n = stream
            .read(chunk.as_mut())
            .map_err(|e| format!("reading the boot configuration from {addr}: {e}"))?;
        if n == 0 {
            break;
        }
        if buf.len() + n > MAX_BOOT_CONFIG {
            return Err(format!("the boot configuration is larger than {MAX_BOOT_CONFIG} bytes"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    BootConfig::parse(&buf)
}

/// Mounts devtmpfs on `/dev`, proc on `/proc` and sysfs on `/sys` (each created if missing; one
/// already mounted is left as it is).
///
/// # Errors
/// The first mount that fails otherwise.
#[cfg(target_os = "linux")]
pub fn mount_filesystems() -> Result<(), String> {
    use nix::{errno::Errno, mount::MsFlags};
    for (fstype, target) in [("devtmpfs", "/dev"), ("proc", "/proc"), ("sysfs", "/sys")] {
        let _ = std::fs::create_dir_all(target);
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
        match nix::mount::mount(Some(fstype), target, Some(fstype), flags, None::<&str>) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => return Err(format!("mounting {fstype} on {target}: {e}")),
        }
    }
    Ok(())
}

/// Loads the modules `dir/modules.load` lists, with their parameters from `cmdline`. No
/// `modules.load` means nothing to load (a kernel with the drivers built in). A module already
/// loaded or built in counts as loaded.
///
/// # Errors
/// A sentence naming the module that failed.
#[cfg(target_os = "linux")]
pub fn load_modules(dir: &std::path::Path, cmdline: &str) -> Result<usize, String> {
    use nix::{errno::Errno, kmod::ModuleInitFlags};
    let list = match std::fs::read_to_string(dir.join("modules.load")) {
        Ok(text) => parse_modules_load(&text)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("reading {}/modules.load: {e}", dir.display())),
    };
    for module in &list {
        let path = dir.join(&module.file);
        let file =
            std::fs::File::open(&path).map_err(|e| format!("module {}: {e}", path.display()))?;
        let params =
            module.prefix.as_deref().map(|p| module_params(cmdline, p)).unwrap_or_default();
        let params = std::ffi::CString::new(params)
            .map_err(|_| format!("module {}: a parameter holds a NUL byte", module.file))?;
        match nix::kmod::finit_module(&file, &params, ModuleInitFlags::empty()) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(format!("loading module {}: {e}", module.file)),
        }
    }
    Ok(list.len())
}

/// Ends the enclave: PID 1 may not exit (the kernel would panic), so it restarts the machine,
/// which in an enclave (`reboot=k`, and QEMU's `-no-reboot`) ends it.
#[cfg(target_os = "linux")]
pub fn halt() -> ! {
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // Not reached when the call succeeds; if it fails, wait to be stopped from outside.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_kernel_started_init_is_the_image_init() {
        use std::ffi::OsStr;
        let init = Some(OsStr::new("/init"));
        assert!(is_image_init(1, init, false));
        // A container's first process: /proc mounted, usually another name.
        assert!(!is_image_init(1, init, true));
        assert!(!is_image_init(1, Some(OsStr::new("wallet-enclave")), false));
        assert!(!is_image_init(1, Some(OsStr::new("/usr/bin/wallet-enclave")), false));
        assert!(!is_image_init(1, None, false));
        // Any other process.
        assert!(!is_image_init(2, init, false));
        // This test process itself.
        let me = std::env::args_os().next();
        assert!(!is_image_init(
            std::process::id(),
            me.as_deref(),
            std::path::Path::new("/proc/self").exists()
        ));
    }

    #[test]
    fn the_parent_cid_comes_from_the_last_word_else_3() {
        assert_eq!(parent_cid("console=ttyS0 reboot=k"), Ok(3));
        assert_eq!(parent_cid("a wallet.parent_cid=2 b"), Ok(2));
        assert_eq!(parent_cid("wallet.parent_cid=2 wallet.parent_cid=7"), Ok(7));
        assert!(parent_cid("wallet.parent_cid=x").is_err());
        assert!(parent_cid("wallet.parent_cid=").is_err());
        assert_eq!(parent_cid("xwallet.parent_cid=2"), Ok(3));
    }

    #[test]
    fn module_parameters_are_the_prefixed_words() {
        let cmdline = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 \
                       virtio_mmio_x.y=1 virtio_mmio.device=512@0xfeb00c00:11 virtio_mmio. nsm";
        assert_eq!(
            module_params(cmdline, "virtio_mmio"),
            "device=512@0xfeb00e00:12 device=512@0xfeb00c00:11"
        );
        assert_eq!(module_params(cmdline, "nsm"), "");
    }

    #[test]
    fn modules_load_lines() {
        let parsed = parse_modules_load(
            "# order matters\nvirtio_mmio.ko\n\nvirtio_mmio_shim.ko virtio_mmio  # devices\n",
        )
        .unwrap();
        assert_eq!(
            parsed,
            vec![
                ModuleLine { file: "virtio_mmio.ko".into(), prefix: None },
                ModuleLine {
                    file: "virtio_mmio_shim.ko".into(),
                    prefix: Some("virtio_mmio".into())
                },
            ]
        );
        for bad in ["../x.ko", "a/b.ko", "x.so", "x.ko a b", ".ko"] {
            assert!(parse_modules_load(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn boot_config_takes_args_and_known_env_only() {
        let c = BootConfig::parse(
            br#"{"args":["--vsock-port","5000"],"env":{"AWS_ACCESS_KEY_ID":"AKID","RUST_LOG":""}}"#,
        )
        .unwrap();
        assert_eq!(c.args, ["--vsock-port", "5000"]);
        assert_eq!(c.env("AWS_ACCESS_KEY_ID").as_deref(), Some("AKID"));
        assert_eq!(c.env("RUST_LOG"), None);
        assert_eq!(c.env("AWS_SECRET_ACCESS_KEY"), None);
        let shown = format!("{c:?}");
        assert!(shown.contains("AWS_ACCESS_KEY_ID") && !shown.contains("AKID"), "{shown}");

        for bad in [
            &br#"{"args":[],"env":{"LD_PRELOAD":"x"}}"#[..],
            br#"{"args":[],"extra":1}"#,
            br#"{"env":{}}"#,
            br#"["--x"]"#,
            b"not json",
        ] {
            assert!(BootConfig::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let big = format!(r#"{{"args":["{}"]}}"#, "a".repeat(MAX_BOOT_CONFIG));
        assert!(BootConfig::parse(big.as_bytes()).unwrap_err().contains("larger"));
    }

    #[test]
    fn fetch_reads_what_the_parent_sends_and_bounds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            for answer in
                [br#"{"args":["--service-id","s"]}"#.to_vec(), vec![b' '; MAX_BOOT_CONFIG + 10]]
            {
                let (mut s, _) = listener.accept().unwrap();
                s.write_all(&answer).unwrap();
            }
        });
        let addr = HostAddress::Unix(path);
        let c = fetch_boot_config(&addr, Duration::from_secs(5)).unwrap();
        assert_eq!(c.args, ["--service-id", "s"]);
        assert!(fetch_boot_config(&addr, Duration::from_secs(5)).unwrap_err().contains("larger"));
        server.join().unwrap();
        let gone = HostAddress::Unix(dir.path().join("absent.sock"));
        let err = fetch_boot_config(&gone, Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("--serve-boot"), "{err}");
    }

    /// A parent that sends a byte now and then cannot hold the boot past the deadline.
    #[test]
    fn a_trickling_parent_meets_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slow.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            for _ in 0..40 {
                if s.write_all(b" ").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        // Without the deadline the fetch would read all 40 bytes (4 s) and fail on the JSON.
        let err = fetch_boot_config(&HostAddress::Unix(path), Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("did not arrive within"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn heartbeat_wants_its_byte_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hb.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            for reply in [HEARTBEAT, 0] {
                let (mut s, _) = listener.accept().unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).unwrap();
                assert_eq!(b[0], HEARTBEAT);
                s.write_all(&[reply]).unwrap();
            }
        });
        let addr = HostAddress::Unix(path);
        heartbeat(&addr).unwrap();
        assert!(heartbeat(&addr).is_err());
        server.join().unwrap();
    }
}
