//! The QEMU harness's console reader on a pipe, without QEMU: what a guest
//! prints is seen as it is printed, a prompt that waits for its input (no
//! newline yet) included, and a program's line that a kernel message cut
//! in two is put back together.

mod common;

use std::io::Write as _;
use std::time::{Duration, Instant};

use common::tempdir::TempDir;
use common::vm::console::{Console, Upto, Waited};

const PROMPT: &str = "kjump: passphrase for the encrypted image: ";

#[test]
fn a_prompt_without_a_newline_is_seen_when_it_is_printed() {
    let dir = TempDir::new("harness-prompt");
    let (reader, mut writer) = std::io::pipe().expect("a pipe");
    let console = Console::start(reader, Instant::now(), &dir.path("console.log"));
    writer
        .write_all(format!("[    1.000000] Linux version 6.12\n{PROMPT}").as_bytes())
        .expect("writing to the pipe");
    // The writer stays open and sends nothing more, as a prompt waits.
    let found = console
        .wait_for_any(
            0,
            &["passphrase for the encrypted image"],
            Upto::Printed,
            Duration::from_secs(10),
        )
        .expect("the prompt");
    assert_eq!(
        (found.index, found.needle, found.line.text.as_str()),
        (1, 0, PROMPT.trim_end_matches('\n'))
    );
    assert_eq!(
        console.lines().len(),
        1,
        "the prompt is not a whole line yet"
    );
    drop(writer);
}

#[test]
fn a_line_cut_by_a_kernel_message_is_put_back_together() {
    let dir = TempDir::new("harness-cut");
    let (reader, mut writer) = std::io::pipe().expect("a pipe");
    let mut console = Console::start(reader, Instant::now(), &dir.path("console.log"));
    writer
        .write_all(
            b"kjump: restore kernel st[    8.613697] random: crng init done\narted\nA: DONE\n",
        )
        .expect("writing to the pipe");
    drop(writer);
    let found = console
        .wait_for_any(0, &["A: DONE"], Upto::Printed, Duration::from_secs(10))
        .expect("the last line");
    assert_eq!(found.needle, 0);
    console.join();
    let texts: Vec<String> = console.lines().into_iter().map(|l| l.text).collect();
    assert_eq!(
        texts,
        [
            "[    8.613697] random: crng init done",
            "kjump: restore kernel started",
            "A: DONE"
        ]
    );
    let log = std::fs::read_to_string(dir.path("console.log")).expect("the console log");
    assert!(
        log.contains("kjump: restore kernel st[    8.613697]"),
        "{log}"
    );
}

#[test]
fn a_wait_ends_when_the_console_closes_or_the_time_is_up() {
    let dir = TempDir::new("harness-wait");
    let (reader, mut writer) = std::io::pipe().expect("a pipe");
    let console = Console::start(reader, Instant::now(), &dir.path("console.log"));
    writer.write_all(b"A: up\n").expect("writing to the pipe");
    let waited = console.wait_for_any(0, &["RESUMED"], Upto::Printed, Duration::from_millis(300));
    assert_eq!(waited.map(|f| f.needle), Err(Waited::Timeout));
    drop(writer);
    let waited = console.wait_for_any(0, &["RESUMED"], Upto::Printed, Duration::from_secs(10));
    assert_eq!(waited.map(|f| f.needle), Err(Waited::Closed));
}

/// How tests/common/sysvm.rs runs a shell command: its markers are looked
/// for past the lines earlier waits found, and the end marker only on a
/// whole line, so the exit code after it has come too.
#[test]
fn a_wait_from_a_line_on_sees_only_later_lines_and_whole_ones_if_asked() {
    let dir = TempDir::new("harness-from");
    let (reader, mut writer) = std::io::pipe().expect("a pipe");
    let console = Console::start(reader, Instant::now(), &dir.path("console.log"));
    let wait = |from, needle, upto, secs| {
        console.wait_for_any(from, &[needle], upto, Duration::from_millis(secs))
    };
    writer
        .write_all(b"@@B1\nfirst\n@@E1:0@@\nroot@kjump-test:~# ")
        .expect("writing to the pipe");
    let found = wait(0, "root@kjump-test:~#", Upto::Printed, 10_000).expect("the prompt");
    assert_eq!(found.index, 3);
    assert_eq!(
        wait(1, "@@B1", Upto::Printed, 300).map(|f| f.index),
        Err(Waited::Timeout)
    );
    writer
        .write_all(b"echo\n@@B2\nsecond\n@@E2:")
        .expect("writing to the pipe");
    let begin = wait(4, "@@B", Upto::Ended, 10_000).expect("the second begin marker");
    assert_eq!((begin.index, begin.line.text.as_str()), (4, "@@B2"));
    // The end marker's line is not ended yet: its exit code may follow.
    assert_eq!(
        wait(5, "@@E2:", Upto::Ended, 300).map(|f| f.index),
        Err(Waited::Timeout)
    );
    writer.write_all(b"3@@\n").expect("writing to the pipe");
    let end = wait(5, "@@E2:", Upto::Ended, 10_000).expect("the second end marker");
    assert_eq!((end.index, end.line.text.as_str()), (6, "@@E2:3@@"));
    drop(writer);
}
