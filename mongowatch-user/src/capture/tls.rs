//! Finding the TLS library each watched process really uses, and attaching the TLS programs
//! (`mongowatch-ebpf/src/tls.rs`) to it.
//!
//! A library is any ELF file a process maps executable that *defines* `SSL_write` (in
//! `.dynsym`, else `.symtab`: cryptography's bundled OpenSSL has its `SSL_*` as local symbols
//! only): the system `libssl.so.3` / `.so.1.1`, Node's static copy in `node` or `libnode`,
//! Python cryptography's `_rust.abi3.so`. The symbols are resolved here to file offsets (aya's
//! own lookup takes the first name match, which may be an undefined import). The file is opened
//! through `/proc/PID/root`, so the copy inside a container is the one probed. Each file
//! (device, inode) is read once; its probes are attached for each selected process that maps
//! it (`UProbeScope::OneProcess`), so the kernel puts no breakpoint in any other process: a
//! process that is not watched pays nothing for sharing the library (attached for every
//! process instead, each of its `SSL_*` calls cost it about 20 to 35 µs of traps here). The
//! probes are detached when the process is forgotten. Python maps libssl only when it imports
//! `ssl`: the kernel reports each file a selected
//! process maps executable (`ProcMapped`) and the process is scanned then, before its first TLS
//! call; watched processes are also scanned again from time to time (a kernel without the
//! mmap tracepoint, a lost event).

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use std::num::NonZeroU32;

use aya::{
    programs::{
        uprobe::{UProbeLink, UProbeLinkId, UProbeScope},
        UProbe,
    },
    Ebpf,
};
use object::{Object, ObjectSegment, ObjectSymbol};

/// (kernel program, function, is it the return probe). `SSL_write_ex2` exists from OpenSSL
/// 3.3 on; `SSL_write_ex` may tail-call it (both entries fire, the programs keep one call).
const HOOKS: &[(&str, &str)] = &[
    ("ssl_read", "SSL_read"),
    ("ssl_read_ret", "SSL_read"),
    ("ssl_read_ex", "SSL_read_ex"),
    ("ssl_read_ret", "SSL_read_ex"),
    ("ssl_write", "SSL_write"),
    ("ssl_write_ret", "SSL_write"),
    ("ssl_write_ex", "SSL_write_ex"),
    ("ssl_write_ret", "SSL_write_ex"),
    ("ssl_write_ex2", "SSL_write_ex2"),
    ("ssl_write_ret", "SSL_write_ex2"),
    ("ssl_do_handshake", "SSL_do_handshake"),
    ("ssl_do_handshake_ret", "SSL_do_handshake"),
    ("ssl_free", "SSL_free"),
];

const PROGRAMS: &[&str] = &[
    "ssl_read",
    "ssl_read_ex",
    "ssl_read_ret",
    "ssl_write",
    "ssl_write_ex",
    "ssl_write_ex2",
    "ssl_write_ret",
    "ssl_do_handshake",
    "ssl_do_handshake_ret",
    "ssl_free",
];

/// Whether a process's TLS can be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// A library it maps is hooked.
    Hooked,
    /// Why not (said in the warning about its TLS connections).
    Not(String),
}

/// Counters of the TLS library hooks.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TlsStats {
    /// Libraries hooked, once per process that maps them.
    pub libraries_attached: u64,
    /// Libraries (defining `SSL_write`) whose probes could not be attached for a process.
    pub libraries_failed: u64,
    /// Scans of a watched process's maps.
    pub scans: u64,
    /// Processes whose libraries are hooked now.
    pub processes_hooked: u64,
}

/// A file, by (device, inode) as /proc/PID/maps gives them.
type FileKey = (String, u64);
/// The probes attached to one library for one process: (program, link) pairs.
type ProbeLinks = Vec<(&'static str, UProbeLinkId)>;

/// The libraries found and hooked so far.
#[derive(Default)]
pub struct TlsHooks {
    loaded: Option<Result<(), String>>,
    /// Files looked at: the `SSL_*` functions' file offsets, empty when it defines none.
    files: HashMap<FileKey, HashMap<&'static str, u64>>,
    /// Each hooked process's probes, by library.
    links: HashMap<u32, HashMap<FileKey, ProbeLinks>>,
    /// Each scanned process's verdict.
    reach: HashMap<u32, Reach>,
    /// Detached probes go to a thread of their own to be closed: the kernel waits for RCU
    /// grace periods as each goes (about 2 s for one process's probes here), which would
    /// stall the loop that drains the ring.
    reaper: Option<std::sync::mpsc::Sender<Vec<UProbeLink>>>,
    /// Executables looked at, by (device, inode): is it a Go program.
    go_executables: HashMap<(u64, u64), bool>,
    stats: TlsStats,
}

/// One executable file mapping of /proc/PID/maps.
#[derive(Debug, PartialEq, Eq)]
pub struct Mapping {
    pub dev: String,
    pub inode: u64,
    pub path: String,
}

/// What one look at a process's maps found.
pub struct Libraries {
    files: Vec<Mapping>,
    /// A library it maps is hooked.
    hooked: bool,
    /// Why hooking one failed.
    failure: Option<String>,
}

/// The executable file mappings of a `/proc/PID/maps` text, each file once.
pub fn executable_files(maps: &str) -> Vec<Mapping> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(_), Some(perms), Some(_), Some(dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path: Vec<&str> = f.collect();
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        if inode == 0 || !perms.contains('x') || path.is_empty() || !path[0].starts_with('/') {
            continue;
        }
        let path = path.join(" ");
        if seen.insert((dev.to_string(), inode)) {
            out.push(Mapping {
                dev: dev.to_string(),
                inode,
                path,
            });
        }
    }
    out
}

/// File offsets of the `SSL_*` functions an ELF image defines (`.dynsym` first, then
/// `.symtab`); empty when it does not define `SSL_write`, or is not an ELF file.
pub fn ssl_offsets(image: &[u8]) -> HashMap<&'static str, u64> {
    let mut out = HashMap::new();
    let Ok(file) = object::File::parse(image) else {
        return out;
    };
    let wanted = |name: &str| HOOKS.iter().find(|(_, f)| *f == name).map(|(_, f)| *f);
    for symbols in [
        file.dynamic_symbols().collect::<Vec<_>>(),
        file.symbols().collect::<Vec<_>>(),
    ] {
        for sym in symbols {
            if !sym.is_definition() || sym.address() == 0 {
                continue;
            }
            let Some(name) = sym.name().ok().and_then(wanted) else {
                continue;
            };
            if out.contains_key(name) {
                continue;
            }
            if let Some(offset) = file_offset(&file, sym.address()) {
                out.insert(name, offset);
            }
        }
        if out.contains_key("SSL_write") {
            break;
        }
    }
    if !out.contains_key("SSL_write") {
        out.clear();
    }
    out
}

/// The file offset of a virtual address, from the loadable segment that holds it.
fn file_offset(file: &object::File<'_>, addr: u64) -> Option<u64> {
    file.segments().find_map(|seg| {
        let (start, size) = (seg.address(), seg.size());
        let (offset, file_size) = seg.file_range();
        (addr >= start && addr < start + size && addr - start < file_size)
            .then(|| offset + (addr - start))
    })
}

/// Whether the executable at `path` is a Go program (it has Go's build-info section). Only
/// its ELF headers and section names are read, not the whole file: every process selected
/// gets this look, and executables run to tens of MB.
pub fn is_go_executable(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let cache = object::ReadCache::new(file);
    object::File::parse(&cache).is_ok_and(|f| f.section_by_name(".go.buildinfo").is_some())
}

/// Why a process with no OpenSSL may be encrypting anyway, from what it maps.
pub fn runtime_hint(files: &[Mapping], go: bool) -> String {
    let names: Vec<&str> = files
        .iter()
        .map(|m| m.path.rsplit('/').next().unwrap_or(""))
        .collect();
    if names.contains(&"libjvm.so") {
        return "a Java process: JSSE encrypts in Java, with no native library to hook".to_string();
    }
    if go {
        return "a Go program: Go's crypto/tls is not hooked (uretprobes break Go stacks)"
            .to_string();
    }
    "no library defining SSL_write (OpenSSL) is mapped by this process".to_string()
}

impl TlsHooks {
    pub fn stats(&self) -> TlsStats {
        TlsStats {
            processes_hooked: self.links.len() as u64,
            ..self.stats.clone()
        }
    }

    pub fn reach(&self, pid: u32) -> Option<&Reach> {
        self.reach.get(&pid)
    }

    /// `pid` is gone or no longer watched: its verdict goes, and its probes are detached.
    pub fn forget(&mut self, ebpf: &mut Ebpf, pid: u32) {
        self.reach.remove(&pid);
        let Some(libraries) = self.links.remove(&pid) else {
            return;
        };
        let mut owned = Vec::new();
        for (program, link) in libraries.into_values().flatten() {
            match ebpf
                .program_mut(program)
                .and_then(|p| <&mut UProbe>::try_from(p).ok())
                .map(|p| p.take_link(link))
            {
                Some(Ok(link)) => owned.push(link),
                Some(Err(e)) => tracing::debug!(pid, program, "detaching a TLS probe: {e}"),
                None => {}
            }
        }
        self.reap(owned);
    }

    /// Closes `links` on the reaper thread (started on first use), or here if it cannot run.
    fn reap(&mut self, links: Vec<UProbeLink>) {
        if self.reaper.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<Vec<UProbeLink>>();
            let spawned = std::thread::Builder::new()
                .name("tls-detach".into())
                .spawn(move || rx.into_iter().for_each(drop));
            if spawned.is_ok() {
                self.reaper = Some(tx);
            }
        }
        match &self.reaper {
            Some(tx) => {
                if let Err(back) = tx.send(links) {
                    drop(back.0);
                }
            }
            None => drop(links),
        }
    }

    /// Whether `pid` runs a Go program, looked at once per executable.
    fn is_go(&mut self, pid: u32) -> bool {
        use std::os::unix::fs::MetadataExt;
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let Ok(meta) = std::fs::metadata(&exe) else {
            return false;
        };
        *self
            .go_executables
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| is_go_executable(&exe))
    }

    /// The processes whose probes are attached.
    pub fn hooked_pids(&self) -> Vec<u32> {
        self.links.keys().copied().collect()
    }

    /// Scans `pid`'s maps and attaches to any OpenSSL copy not hooked yet. Returns the
    /// process's verdict when it changed.
    pub fn scan(&mut self, ebpf: &mut Ebpf, pid: u32) -> Option<Reach> {
        let Libraries {
            files,
            hooked,
            failure,
        } = self.hook(ebpf, pid)?;
        let reach = if hooked {
            Reach::Hooked
        } else if let Some(why) = failure {
            Reach::Not(why)
        } else {
            Reach::Not(runtime_hint(&files, self.is_go(pid)))
        };
        if self.reach.get(&pid) == Some(&reach) {
            return None;
        }
        self.reach.insert(pid, reach.clone());
        Some(reach)
    }

    /// Attaches to any OpenSSL copy `pid` maps that is not hooked for it yet, keeping no
    /// verdict on the process: for a process the kernel selected that has no connection yet
    /// (it may never have one).
    pub fn hook(&mut self, ebpf: &mut Ebpf, pid: u32) -> Option<Libraries> {
        self.stats.scans += 1;
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        let files = executable_files(&maps);
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let mut hooked = false;
        let mut failure = None;
        for m in &files {
            let key = (m.dev.clone(), m.inode);
            let host = root.join(m.path.trim_start_matches('/'));
            let offsets = self.files.entry(key.clone()).or_insert_with(|| {
                std::fs::read(&host)
                    .map(|image| ssl_offsets(&image))
                    .unwrap_or_default()
            });
            if offsets.is_empty() {
                continue;
            }
            if self.links.get(&pid).is_some_and(|l| l.contains_key(&key)) {
                hooked = true;
                continue;
            }
            let offsets = offsets.clone();
            match self.attach(ebpf, &host, &offsets, pid) {
                Ok(links) => {
                    self.stats.libraries_attached += 1;
                    tracing::info!(pid, library = %m.path, "TLS library hooked");
                    self.links.entry(pid).or_default().insert(key, links);
                    hooked = true;
                }
                Err(e) => {
                    self.stats.libraries_failed += 1;
                    let why = format!("hooking its TLS library {} failed: {e}", m.path);
                    tracing::warn!(pid, "{why}");
                    failure = Some(why);
                }
            }
        }
        Some(Libraries {
            files,
            hooked,
            failure,
        })
    }

    /// Attaches every probe to the library at `path` for process `pid` alone; on a failure,
    /// what was attached is detached again.
    fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        path: &Path,
        offsets: &HashMap<&'static str, u64>,
        pid: u32,
    ) -> Result<ProbeLinks, String> {
        self.load(ebpf)?;
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or("pid 0")?);
        let mut links = Vec::new();
        let mut result = Ok(());
        for (program, function) in HOOKS {
            let Some(offset) = offsets.get(function) else {
                continue;
            };
            let attached = ebpf
                .program_mut(program)
                .ok_or_else(|| format!("program {program} missing"))
                .and_then(|p| <&mut UProbe>::try_from(p).map_err(|e| format!("{program}: {e}")))
                .and_then(|p| {
                    p.attach(*offset, path, scope)
                        .map_err(|e| format!("{function} ({program}): {e}"))
                });
            match attached {
                Ok(link) => links.push((*program, link)),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = result {
            for (program, link) in links {
                if let Some(p) = ebpf
                    .program_mut(program)
                    .and_then(|p| <&mut UProbe>::try_from(p).ok())
                {
                    let _ = p.detach(link);
                }
            }
            return Err(e);
        }
        Ok(links)
    }

    /// Loads the TLS programs into the kernel, once.
    fn load(&mut self, ebpf: &mut Ebpf) -> Result<(), String> {
        if let Some(done) = &self.loaded {
            return done.clone();
        }
        let result = PROGRAMS.iter().try_for_each(|name| {
            let p: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or_else(|| format!("program {name} missing from the eBPF object"))?
                .try_into()
                .map_err(|e| format!("{name}: {e}"))?;
            p.load()
                .map_err(|e| format!("the kernel refused program {name}: {e}"))
        });
        self.loaded = Some(result.clone());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_give_each_executable_file_once() {
        let maps = "\
7f0000000000-7f0000001000 r--p 00000000 08:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000001000-7f0000002000 r-xp 00001000 08:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000002000-7f0000003000 r-xp 00002000 08:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000003000-7f0000004000 rw-p 00000000 00:00 0 
7f0000004000-7f0000005000 r-xp 00000000 08:01 99 /opt/my app/lib.so
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0 [vdso]
";
        let files = executable_files(maps);
        assert_eq!(
            files,
            vec![
                Mapping {
                    dev: "08:01".into(),
                    inode: 1234,
                    path: "/usr/lib/x86_64-linux-gnu/libssl.so.3".into()
                },
                Mapping {
                    dev: "08:01".into(),
                    inode: 99,
                    path: "/opt/my app/lib.so".into()
                },
            ]
        );
    }

    #[test]
    fn a_non_elf_file_defines_nothing() {
        assert!(ssl_offsets(b"not an elf").is_empty());
    }

    /// The system libssl (Python's `ssl` needs it, so every machine that runs the tests has
    /// one) defines SSL_write and SSL_read at offsets inside the file; this test binary does
    /// not define SSL_write.
    #[test]
    fn system_libssl_symbols_resolve_to_file_offsets() {
        let Some(libssl) = [
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            "/lib/x86_64-linux-gnu/libssl.so.3",
            "/usr/lib64/libssl.so.3",
        ]
        .iter()
        .find(|p| Path::new(p).exists()) else {
            panic!("no libssl.so.3 on this machine");
        };
        let image = std::fs::read(libssl).unwrap();
        let offsets = ssl_offsets(&image);
        for f in [
            "SSL_write",
            "SSL_read",
            "SSL_read_ex",
            "SSL_write_ex",
            "SSL_free",
        ] {
            let off = offsets.get(f).copied().unwrap_or_else(|| panic!("{f}"));
            assert!(off > 0 && (off as usize) < image.len(), "{f} at {off:#x}");
        }
        let this = std::fs::read("/proc/self/exe").unwrap();
        assert!(ssl_offsets(&this).is_empty());
    }

    #[test]
    fn runtime_hints_name_java_and_go() {
        let jvm = vec![Mapping {
            dev: "0".into(),
            inode: 1,
            path: "/usr/lib/jvm/lib/server/libjvm.so".into(),
        }];
        assert!(runtime_hint(&jvm, false).contains("Java"));
        assert!(runtime_hint(&[], true).contains("Go"));
        assert!(runtime_hint(&[], false).contains("SSL_write"));
    }

    /// The smallest ELF64 with one section besides its names: `section`.
    fn elf_with_section(section: &str) -> Vec<u8> {
        let names = format!("\0.shstrtab\0{section}\0");
        let shoff = (64 + names.len()).next_multiple_of(8);
        let mut e = Vec::new();
        e.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e.extend_from_slice(&62u16.to_le_bytes()); // x86-64
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&0u64.to_le_bytes()); // entry
        e.extend_from_slice(&0u64.to_le_bytes()); // no program headers
        e.extend_from_slice(&(shoff as u64).to_le_bytes());
        e.extend_from_slice(&0u32.to_le_bytes());
        for v in [64u16, 56, 0, 64, 3, 1] {
            e.extend_from_slice(&v.to_le_bytes());
        }
        e.extend_from_slice(names.as_bytes());
        e.resize(shoff, 0);
        e.extend_from_slice(&[0; 64]);
        // (name, type, flags, offset, size)
        for (name, kind, flags, size) in [(1u32, 3u32, 0u64, names.len()), (11, 1, 2, 0)] {
            e.extend_from_slice(&name.to_le_bytes());
            e.extend_from_slice(&kind.to_le_bytes());
            e.extend_from_slice(&flags.to_le_bytes());
            e.extend_from_slice(&0u64.to_le_bytes()); // addr
            e.extend_from_slice(&64u64.to_le_bytes()); // offset
            e.extend_from_slice(&(size as u64).to_le_bytes());
            e.extend_from_slice(&[0; 8]); // link, info
            e.extend_from_slice(&1u64.to_le_bytes()); // align
            e.extend_from_slice(&0u64.to_le_bytes()); // entsize
        }
        e
    }

    #[test]
    fn a_go_executable_is_told_by_its_build_info_section() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        assert!(is_go_executable(&at(
            "go",
            &elf_with_section(".go.buildinfo")
        )));
        assert!(!is_go_executable(&at(
            "c",
            &elf_with_section(".note.gnu.bu")
        )));
        assert!(!is_go_executable(&at("text", b"#!/bin/sh\n")));
        assert!(!is_go_executable(&dir.path().join("missing")));
    }
}
