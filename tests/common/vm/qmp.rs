//! A minimal QMP client (QEMU's machine protocol): one JSON object per line
//! each way, responses told apart from asynchronous events by their first
//! key. Enough for the tests: dump guest memory, ask and change the run
//! state, quit.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long one answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// A failed QMP exchange.
#[derive(Debug)]
pub struct QmpError {
    /// The command (or `greeting`).
    pub command: String,
    /// What went wrong: the error response or the I/O error.
    pub detail: String,
    /// QEMU closed the socket (expected after `quit`).
    pub closed: bool,
}

impl QmpError {
    fn new(command: &str, detail: String) -> QmpError {
        QmpError {
            command: command.to_owned(),
            detail,
            closed: false,
        }
    }
}

impl std::fmt::Display for QmpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "qmp {} failed: {}", self.command, self.detail)
    }
}

/// One connection to a QEMU's QMP socket.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to QEMU's QMP socket and negotiates capabilities.
    pub fn connect(socket: &Path) -> Result<Qmp, QmpError> {
        let error = |detail: String| QmpError::new("greeting", detail);
        // QEMU listens before it starts the guest, so the socket is there
        // once the guest prints anything.
        let stream = UnixStream::connect(socket)
            .map_err(|e| error(format!("connect to {}: {e}", socket.display())))?;
        stream
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(|e| error(format!("set read timeout: {e}")))?;
        let writer = stream
            .try_clone()
            .map_err(|e| error(format!("clone socket: {e}")))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_line("greeting")?;
        if !greeting.contains("\"QMP\"") {
            return Err(error(format!("unexpected greeting {greeting:?}")));
        }
        qmp.execute("qmp_capabilities", r#"{"execute":"qmp_capabilities"}"#)?;
        Ok(qmp)
    }

    fn read_line(&mut self, command: &str) -> Result<String, QmpError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(QmpError {
                closed: true,
                ..QmpError::new(command, "qemu closed the qmp socket".to_owned())
            }),
            Ok(_) => Ok(line),
            Err(e) => Err(QmpError::new(command, format!("read from qmp socket: {e}"))),
        }
    }

    /// Sends `request` and returns its `{"return": ...}` line, skipping events.
    pub fn execute(&mut self, command: &str, request: &str) -> Result<String, QmpError> {
        writeln!(self.writer, "{request}").map_err(|e| QmpError {
            // QEMU on its way out may close the socket before the request.
            closed: matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            ..QmpError::new(command, format!("write to qmp socket: {e}"))
        })?;
        loop {
            let line = self.read_line(command)?;
            let head = line.trim_start();
            if head.starts_with("{\"return\"") {
                return Ok(line);
            }
            if head.starts_with("{\"error\"") {
                return Err(QmpError::new(command, line.trim_end().to_owned()));
            }
            // Otherwise an event such as DUMP_COMPLETED or SHUTDOWN: not needed.
        }
    }

    /// Runs a command without arguments.
    pub fn command(&mut self, command: &str) -> Result<String, QmpError> {
        self.execute(command, &format!(r#"{{"execute":"{command}"}}"#))
    }

    /// The run state `query-status` names (running, suspended, ...).
    pub fn status(&mut self) -> Result<String, QmpError> {
        let reply = self.command("query-status")?;
        json_string_field(&reply, "status")
            .map(str::to_owned)
            .ok_or_else(|| QmpError::new("query-status", format!("no status in {}", reply.trim())))
    }

    /// Polls `query-status` until the guest is in run state `status`;
    /// returns when it saw it.
    pub fn wait_status(&mut self, status: &str, timeout: Duration) -> Result<Instant, QmpError> {
        let started = Instant::now();
        loop {
            let now = self.status()?;
            if now == status {
                return Ok(Instant::now());
            }
            if started.elapsed() > timeout {
                return Err(QmpError::new(
                    "query-status",
                    format!("not {status} after {timeout:?}: {now}"),
                ));
            }
            sleep(POLL);
        }
    }

    /// Asks QEMU to exit. QEMU may close the socket before its answer arrives.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.command("quit") {
            Err(e) if !e.closed => Err(e),
            _ => Ok(()),
        }
    }

    /// Dumps guest physical memory as an ELF core (no paging: every RAM byte,
    /// by physical address) and waits up to `timeout` for QEMU to report it
    /// complete.
    pub fn dump_guest_memory(&mut self, core: &Path, timeout: Duration) -> Result<(), QmpError> {
        let command = "dump-guest-memory";
        let path = core
            .to_str()
            .ok_or_else(|| QmpError::new(command, format!("{} is not UTF-8", core.display())))?;
        // Detached, so the wait is bounded here rather than by a socket timeout.
        let request = format!(
            r#"{{"execute":"{command}","arguments":{{"paging":false,"detach":true,"protocol":{}}}}}"#,
            json_string(&format!("file:{path}"))
        );
        self.execute(command, &request)?;
        let started = Instant::now();
        loop {
            let reply = self.command("query-dump")?;
            match json_string_field(&reply, "status") {
                Some("completed") => return Ok(()),
                Some("active") if started.elapsed() <= timeout => sleep(POLL),
                Some("active") => {
                    return Err(QmpError::new(
                        command,
                        format!("not complete after {timeout:?}: {}", reply.trim()),
                    ))
                }
                _ => {
                    return Err(QmpError::new(
                        command,
                        format!("query-dump answered {}", reply.trim()),
                    ))
                }
            }
        }
    }

    /// Plugs the raw disk image `disk` in as a virtio disk in PCI slot
    /// `slot` (hot-plug: the guest names it after the disks it has).
    pub fn plug_disk(&mut self, id: &str, disk: &Path, slot: u8) -> Result<(), QmpError> {
        let path = disk.to_str().ok_or_else(|| {
            QmpError::new("blockdev-add", format!("{} is not UTF-8", disk.display()))
        })?;
        let node = json_string(id);
        self.execute(
            "blockdev-add",
            &format!(
                r#"{{"execute":"blockdev-add","arguments":{{"driver":"raw","node-name":{node},"file":{{"driver":"file","filename":{}}}}}}}"#,
                json_string(path)
            ),
        )?;
        self.execute(
            "device_add",
            &format!(
                r#"{{"execute":"device_add","arguments":{{"driver":"virtio-blk-pci","drive":{node},"id":{node},"addr":"{slot:#x}"}}}}"#
            ),
        )?;
        Ok(())
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The value of the first `"key": "value"` in a line of JSON, if the value is
/// a string without escapes (enough for QMP status words).
fn json_string_field<'j>(json: &'j str, key: &str) -> Option<&'j str> {
    let quoted = format!("\"{key}\"");
    let after_key = &json[json.find(&quoted)? + quoted.len()..];
    let value = after_key.trim_start().strip_prefix(':')?.trim_start();
    let value = value.strip_prefix('"')?;
    Some(&value[..value.find('"')?])
}
