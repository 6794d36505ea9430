//! `wallet-eif`: builds the x402 wallet's enclave image file (EIF) reproducibly, and prints the
//! PCRs a Nitro enclave booted from it reports.
//!
//! An EIF is a kernel, its command line and ramdisks. Nitro measures them into PCRs (SHA-384,
//! extended from zero), as `aws-nitro-enclaves-image-format` computes them:
//! * PCR0: kernel, command line and every ramdisk (the whole image);
//! * PCR1: kernel, command line and the first ramdisk (here the *bootstrap* ramdisk: `/dev`,
//!   `/proc`, `/sys` and the kernel modules with their `lib/modules/modules.load`);
//! * PCR2: the other ramdisks (here the *app* ramdisk: `/init`, the `wallet-enclave` binary,
//!   and nothing else), so PCR2 names the wallet build whatever kernel it boots on.
//!
//! Reproducible: the ramdisks are uncompressed newc cpio archives whose entries are in path
//! order with inode numbers counted from 1, owner 0:0, modification time 0 and fixed modes; the
//! EIF's metadata has a fixed build time. The same inputs give the same bytes.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use aws_nitro_enclaves_image_format::{
    defs::{EifBuildInfo, EifIdentityInfo},
    utils::{eif_reader::EifReader, get_pcrs, EifBuilder},
};
use clap::{Parser, Subcommand};
use sha2::{Digest as _, Sha384};

/// Builds the wallet's enclave image file (EIF) and prints its PCRs.
#[derive(Debug, Parser)]
#[command(name = "wallet-eif", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build an EIF and print its measurements as nitro-cli does:
    /// {"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": hex, "PCR1": hex, "PCR2": hex}}
    Build(Build),
    /// Print the measurements of an existing EIF (recomputed from its sections).
    Describe {
        /// The EIF file.
        eif: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct Build {
    /// The kernel (a bzImage).
    #[arg(long)]
    kernel: PathBuf,
    /// The kernel command line (measured in PCR0 and PCR1).
    #[arg(long)]
    cmdline: String,
    /// A directory of kernel modules with a `modules.load` listing them in load order (FILE
    /// [PREFIX] per line): its `.ko` files and `modules.load` go to the bootstrap ramdisk's
    /// lib/modules/. Without it, the kernel must have its drivers built in.
    #[arg(long)]
    modules: Option<PathBuf>,
    /// The wallet-enclave binary (static): the app ramdisk's /init.
    #[arg(long)]
    init: PathBuf,
    /// An extra file for the app ramdisk, SOURCE=PATH (PATH relative to /, no `..`). This
    /// changes PCR2 (tests use it to make a tampered image).
    #[arg(long, value_name = "SOURCE=PATH")]
    app_file: Vec<String>,
    /// Output directory: NAME.eif, NAME.pcrs.json, bootstrap.cpio, app.cpio.
    #[arg(long)]
    out: PathBuf,
    /// Image name (file name and EIF metadata).
    #[arg(long, default_value = "wallet")]
    name: String,
    /// Image version (EIF metadata; not measured).
    #[arg(long, default_value = "0")]
    image_version: String,
    /// Kernel version (EIF metadata; not measured).
    #[arg(long, default_value = "unknown")]
    kernel_version: String,
}

/// One ramdisk entry.
#[derive(Debug)]
enum Node {
    Dir,
    File { data: Vec<u8>, executable: bool },
    CharDevice { major: u32, minor: u32 },
}

/// A ramdisk: path (relative, no leading `/`) to entry. Path order is archive order, and puts
/// every directory before what it holds.
type Tree = BTreeMap<String, Node>;

/// Adds `path` and its parent directories.
fn insert(tree: &mut Tree, path: &str, node: Node) -> Result<(), String> {
    if path.is_empty()
        || path.starts_with('/')
        || path.split('/').any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!("bad ramdisk path {path:?}"));
    }
    let mut parent = String::new();
    for component in path.split('/').collect::<Vec<_>>().split_last().map_or(&[][..], |(_, p)| p) {
        if !parent.is_empty() {
            parent.push('/');
        }
        parent.push_str(component);
        match tree.get(&parent) {
            None => {
                tree.insert(parent.clone(), Node::Dir);
            }
            Some(Node::Dir) => {}
            Some(_) => return Err(format!("{parent:?} is a file, not a directory")),
        }
    }
    if tree.insert(path.to_owned(), node).is_some() {
        return Err(format!("{path:?} is in the ramdisk twice"));
    }
    Ok(())
}

/// Writes `tree` as a newc cpio archive with every varying header field fixed.
fn cpio(tree: &Tree) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for (index, (path, node)) in tree.iter().enumerate() {
        let ino = u32::try_from(index + 1).map_err(std::io::Error::other)?;
        let entry = cpio::newc::Builder::new(path).ino(ino).uid(0).gid(0).mtime(0);
        out = match node {
            Node::Dir => entry.mode(0o040_755).nlink(2).write(out, 0).finish()?,
            Node::CharDevice { major, minor } => entry
                .mode(0o020_600)
                .rdev_major(*major)
                .rdev_minor(*minor)
                .write(out, 0)
                .finish()?,
            Node::File { data, executable } => {
                let mode = if *executable { 0o100_755 } else { 0o100_644 };
                let size = u32::try_from(data.len()).map_err(std::io::Error::other)?;
                let mut w = entry.mode(mode).write(out, size);
                w.write_all(data)?;
                w.finish()?
            }
        };
    }
    cpio::newc::trailer(out)
}

/// The bootstrap ramdisk: the device and mount points `/init` needs and the kernel modules.
fn bootstrap_tree(modules: Option<&Path>) -> Result<Tree, String> {
    let mut tree = Tree::new();
    for dir in ["dev", "proc", "sys", "tmp", "lib/modules"] {
        insert(&mut tree, dir, Node::Dir)?;
    }
    insert(&mut tree, "dev/console", Node::CharDevice { major: 5, minor: 1 })?;
    if let Some(dir) = modules {
        let list_path = dir.join("modules.load");
        let list = fs::read_to_string(&list_path)
            .map_err(|e| format!("{}: {e} (a modules directory needs it)", list_path.display()))?;
        insert(
            &mut tree,
            "lib/modules/modules.load",
            Node::File { data: list.clone().into_bytes(), executable: false },
        )?;
        for (n, line) in list.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            let words: Vec<&str> = line.split_ascii_whitespace().collect();
            // The rules the image's /init reads it by (wallet-enclave's init::parse_modules_load):
            // an image it would refuse is refused here, not at every boot.
            let file = match words.as_slice() {
                [] => continue,
                [file] | [file, _] => *file,
                _ => {
                    return Err(format!(
                        "modules.load line {}: {line:?}: expected FILE.ko [PREFIX]",
                        n + 1
                    ))
                }
            };
            if file.contains('/') || file.starts_with('.') || !file.ends_with(".ko") {
                return Err(format!(
                    "modules.load line {}: {file:?} is not a plain FILE.ko name",
                    n + 1
                ));
            }
            let data = fs::read(dir.join(file))
                .map_err(|e| format!("module {}: {e}", dir.join(file).display()))?;
            insert(
                &mut tree,
                &format!("lib/modules/{file}"),
                Node::File { data, executable: false },
            )?;
        }
    }
    Ok(tree)
}

/// The app ramdisk: `/init` and any extra files.
fn app_tree(init: &Path, extra: &[String]) -> Result<Tree, String> {
    let mut tree = Tree::new();
    let data = fs::read(init).map_err(|e| format!("{}: {e}", init.display()))?;
    if !data.starts_with(b"\x7fELF") {
        return Err(format!("{} is not an ELF executable", init.display()));
    }
    insert(&mut tree, "init", Node::File { data, executable: true })?;
    for spec in extra {
        let (source, path) = spec
            .split_once('=')
            .ok_or_else(|| format!("--app-file {spec:?}: expected SOURCE=PATH"))?;
        let data = fs::read(source).map_err(|e| format!("{source}: {e}"))?;
        insert(&mut tree, path.trim_start_matches('/'), Node::File { data, executable: false })?;
    }
    Ok(tree)
}

/// nitro-cli's measurement JSON from `get_pcrs`' map.
fn measurements_json(pcrs: &BTreeMap<String, String>) -> serde_json::Value {
    serde_json::json!({ "Measurements": pcrs })
}

fn build(args: &Build) -> Result<serde_json::Value, String> {
    if args.name.is_empty()
        || !args.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!("--name {:?}: letters, digits, '-', '_' and '.' only", args.name));
    }
    fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let write = |name: &str, bytes: &[u8]| -> Result<PathBuf, String> {
        let path = args.out.join(name);
        fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    };
    let io = |e: std::io::Error| e.to_string();
    let bootstrap =
        write("bootstrap.cpio", &cpio(&bootstrap_tree(args.modules.as_deref())?).map_err(io)?)?;
    let app = write("app.cpio", &cpio(&app_tree(&args.init, &args.app_file)?).map_err(io)?)?;
    if !args.kernel.is_file() {
        return Err(format!("--kernel {}: no such file", args.kernel.display()));
    }
    let info = EifIdentityInfo {
        img_name: args.name.clone(),
        img_version: args.image_version.clone(),
        build_info: EifBuildInfo {
            // Fixed: the image's bytes depend on its inputs only.
            build_time: "1970-01-01T00:00:00Z".to_owned(),
            build_tool: env!("CARGO_PKG_NAME").to_owned(),
            build_tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            img_os: "linux".to_owned(),
            img_kernel: args.kernel_version.clone(),
        },
        docker_info: serde_json::json!({}),
        custom_info: serde_json::json!({}),
    };
    if args.cmdline.contains('\0') {
        return Err("--cmdline holds a NUL byte".to_owned());
    }
    let mut builder =
        EifBuilder::new(&args.kernel, args.cmdline.clone(), None, Sha384::new(), 0, info);
    builder.add_ramdisk(&bootstrap);
    builder.add_ramdisk(&app);
    let eif_path = args.out.join(format!("{}.eif", args.name));
    let mut file =
        fs::File::create(&eif_path).map_err(|e| format!("{}: {e}", eif_path.display()))?;
    let built = builder.write_to(&mut file);
    file.sync_all().map_err(io)?;
    drop(file);
    // Read back: the PCRs of the file on disk, recomputed as a verifier would, must be the ones
    // the builder reported.
    let described = describe(&eif_path)?;
    let reported = measurements_json(&built);
    if described != reported {
        return Err(format!("the EIF read back measures {described}, not {reported}"));
    }
    let text = serde_json::to_string_pretty(&reported).map_err(|e| e.to_string())?;
    write(&format!("{}.pcrs.json", args.name), format!("{text}\n").as_bytes())?;
    Ok(reported)
}

fn describe(eif: &Path) -> Result<serde_json::Value, String> {
    let mut reader = EifReader::from_eif(eif.to_string_lossy().into_owned())
        .map_err(|e| format!("{}: {e}", eif.display()))?;
    if !reader.check_crc() {
        return Err(format!("{}: the EIF's CRC does not match its contents", eif.display()));
    }
    let signed = reader.signature_section.is_some();
    let pcrs = get_pcrs(
        &mut reader.image_hasher,
        &mut reader.bootstrap_hasher,
        &mut reader.app_hasher,
        &mut reader.cert_hasher,
        Sha384::new(),
        signed,
    )?;
    Ok(measurements_json(&pcrs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Build(args) => build(args),
        Command::Describe { eif } => describe(eif),
    };
    match result.and_then(|v| serde_json::to_string_pretty(&v).map_err(|e| e.to_string())) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wallet-eif: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(entries: &[(&str, Node)]) -> Tree {
        let mut t = Tree::new();
        for (path, node) in entries {
            let node = match node {
                Node::Dir => Node::Dir,
                Node::File { data, executable } => {
                    Node::File { data: data.clone(), executable: *executable }
                }
                Node::CharDevice { major, minor } => {
                    Node::CharDevice { major: *major, minor: *minor }
                }
            };
            insert(&mut t, path, node).unwrap();
        }
        t
    }

    #[test]
    fn archives_do_not_depend_on_insertion_order() {
        let a = tree(&[
            ("lib/modules/a.ko", Node::File { data: b"a".to_vec(), executable: false }),
            ("init", Node::File { data: b"\x7fELF".to_vec(), executable: true }),
            ("dev/console", Node::CharDevice { major: 5, minor: 1 }),
        ]);
        let b = tree(&[
            ("dev/console", Node::CharDevice { major: 5, minor: 1 }),
            ("init", Node::File { data: b"\x7fELF".to_vec(), executable: true }),
            ("lib/modules/a.ko", Node::File { data: b"a".to_vec(), executable: false }),
        ]);
        assert_eq!(cpio(&a).unwrap(), cpio(&b).unwrap());
        let names: Vec<_> = a.keys().cloned().collect();
        assert_eq!(names, ["dev", "dev/console", "init", "lib", "lib/modules", "lib/modules/a.ko"]);
    }

    #[test]
    fn archives_read_back_with_fixed_fields() {
        let t = tree(&[
            ("init", Node::File { data: b"\x7fELF-bytes".to_vec(), executable: true }),
            ("dev/console", Node::CharDevice { major: 5, minor: 1 }),
        ]);
        let bytes = cpio(&t).unwrap();
        let mut reader = cpio::NewcReader::new(&bytes[..]).unwrap();
        let mut seen = Vec::new();
        loop {
            let e = reader.entry();
            if e.is_trailer() {
                break;
            }
            assert_eq!((e.uid(), e.gid(), e.mtime()), (0, 0, 0));
            seen.push((e.name().to_owned(), e.ino(), e.mode(), e.file_size(), e.rdev_major()));
            reader = cpio::NewcReader::new(reader.finish().unwrap()).unwrap();
        }
        assert_eq!(
            seen,
            [
                ("dev".to_owned(), 1, 0o040_755, 0, 0),
                ("dev/console".to_owned(), 2, 0o020_600, 0, 5),
                ("init".to_owned(), 3, 0o100_755, 10, 0),
            ]
        );
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut t = Tree::new();
        for bad in ["", "/init", "a//b", "a/../b", "./a", "a/"] {
            assert!(insert(&mut t, bad, Node::Dir).is_err(), "{bad:?}");
        }
        insert(&mut t, "f", Node::File { data: vec![], executable: false }).unwrap();
        assert!(insert(&mut t, "f/g", Node::Dir).is_err());
        assert!(insert(&mut t, "f", Node::Dir).is_err());
    }
}
