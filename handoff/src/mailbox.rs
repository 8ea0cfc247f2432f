//! A page through which the capture kernel tells the saved kernel, or the
//! restore kernel tells the boot that loaded it, why it jumped back.
//!
//! The kernel that jumps (A before hibernating, R0 before resuming) locks
//! one page of its own memory, writes a magic and a random token into it,
//! looks up its physical address in /proc/self/pagemap and names address
//! and token in the next kernel's manifest. That kernel, when it gives up,
//! writes a [`Report`] into the page through /dev/mem, and only when the
//! page still holds the magic and the token: the jumping kernel is frozen
//! while the other runs, so a page that held them when the other kernel
//! looked is the locked page, or (had the page migrated before the freeze)
//! a freed page whose contents nobody uses. Back in the first kernel, the
//! report is read from the page's virtual address.
//!
//! Layout of the page (little-endian):
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `KJMAILBX` |
//! | 8 | 16 | token |
//! | 24 | 4 | report kind: 0 none, 1 failed, 2 ran outside its region |
//! | 28 | 4 | message length |
//! | 32 | 4 | CRC32 of bytes 24..32 and the message |
//! | 36 | length | message, UTF-8 |

use std::fmt;
use std::path::Path;

use kjump_image_format::{MemoryMap, PhysAddr, PhysRange};
use kjump_sys::pagemap::{LockedPage, PageError};
use kjump_sys::physmem::PhysFile;

use crate::uuid::Uuid;

/// The page size the mailbox occupies.
pub const PAGE: usize = kjump_sys::pagemap::PAGE;
const MAGIC: &[u8; 8] = b"KJMAILBX";
const HEADER: usize = 36;
/// Longest message a report carries; longer ones are cut.
pub const MAX_MESSAGE: usize = PAGE - HEADER;

/// Where the next kernel finds the mailbox: its physical address and the
/// token it must hold (manifest key `mailbox`, `0xADDR:TOKEN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailboxAddress {
    /// Physical address of the page.
    pub phys: u64,
    /// The random token written after the magic.
    pub token: Uuid,
}

impl fmt::Display for MailboxAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}:{}", self.phys, self.token)
    }
}

impl MailboxAddress {
    /// Parses `0xADDR:TOKEN` as [`Display`](fmt::Display) writes it.
    pub fn parse(s: &str) -> Option<MailboxAddress> {
        let (addr, token) = s.split_once(':')?;
        let phys = u64::from_str_radix(addr.strip_prefix("0x")?, 16).ok()?;
        (phys % PAGE as u64 == 0).then_some(())?;
        Some(MailboxAddress {
            phys,
            token: Uuid::parse(token)?,
        })
    }
}

/// Why a kernel jumped back without doing its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportKind {
    /// It failed or refused, and wrote nothing it should not have.
    Failed,
    /// It found itself running outside its region: the memory of the
    /// kernel it jumped back to may be damaged.
    Escaped,
}

/// What a kernel left in the mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// What happened.
    pub kind: ReportKind,
    /// Its message, as it printed it on its console.
    pub message: String,
}

impl Report {
    fn encode_into(&self, page: &mut [u8]) {
        let mut message = self.message.as_bytes();
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !self.message.is_char_boundary(cut) {
                cut -= 1;
            }
            message = &message[..cut];
        }
        let kind: u32 = match self.kind {
            ReportKind::Failed => 1,
            ReportKind::Escaped => 2,
        };
        page[24..28].copy_from_slice(&kind.to_le_bytes());
        page[28..32].copy_from_slice(&(message.len() as u32).to_le_bytes());
        page[HEADER..HEADER + message.len()].copy_from_slice(message);
        let crc = report_crc(&page[24..32], message);
        page[32..36].copy_from_slice(&crc.to_le_bytes());
    }

    /// The report in `page`, if it holds a whole one.
    fn decode(page: &[u8]) -> Option<Report> {
        let word =
            |at: usize| u32::from_le_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]]);
        let kind = match word(24) {
            1 => ReportKind::Failed,
            2 => ReportKind::Escaped,
            _ => return None,
        };
        let len = word(28) as usize;
        let message = page.get(HEADER..HEADER.checked_add(len)?)?;
        (report_crc(&page[24..32], message) == word(32)).then_some(())?;
        Some(Report {
            kind,
            message: String::from_utf8_lossy(message).into_owned(),
        })
    }
}

fn report_crc(fields: &[u8], message: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(fields);
    h.update(message);
    h.finalize()
}

fn holds_token(page: &[u8], token: &Uuid) -> bool {
    page.len() >= HEADER && &page[..8] == MAGIC && page[8..24] == token.0
}

/// Why the jumping kernel has no mailbox.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// No locked page with a known physical address.
    #[error(transparent)]
    Page(#[from] PageError),
    /// No page this process could get lies where the next kernel can write.
    #[error("none of the {} MiB of pages this process locked lay in memory the next kernel can reach", .held >> 20)]
    Unreachable {
        /// Bytes locked and looked at.
        held: usize,
    },
}

/// Why the confined kernel could not leave its report.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// /dev/mem could not be opened.
    #[error("opening {path}")]
    Open {
        /// /dev/mem or its stand-in.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The page could not be read or written.
    #[error("{what} the mailbox at {phys:#x}")]
    Io {
        /// "reading" or "writing".
        what: &'static str,
        /// Its physical address.
        phys: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The page is not the mailbox any more.
    #[error("the page at {0:#x} no longer holds the mailbox: nothing written")]
    Gone(u64),
}

/// The jumping kernel's side: a locked page of this process.
pub struct Mailbox {
    map: LockedPage,
    address: MailboxAddress,
}

/// The most memory [`Mailbox::open`] holds while it looks for a page the
/// next kernel can reach: more than the largest capture region.
pub const OPEN_LIMIT: usize = 1 << 30;

impl Mailbox {
    /// Sets up the mailbox in a locked page whose physical address lies in
    /// `reachable` (the memory the next kernel can write through
    /// /dev/mem). Needs CAP_SYS_ADMIN for the physical address.
    ///
    /// The kernel picks the frames. The next kernel is confined to a region
    /// that may be ordinary RAM in this boot (the crashkernel reservation
    /// moves between boots: KASLR places the kernel, the reservation goes
    /// below it), and the page allocator hands out the free frames at the
    /// top of RAM first, which may all lie in that region. So blocks of
    /// frames that hold no reachable page are kept aside, each twice as
    /// large as the one before (a page, two, ..., up to 64 MiB a block, at
    /// most [`OPEN_LIMIT`] in all), until a block holds one; all but that
    /// page are freed on return.
    pub fn open(reachable: &MemoryMap) -> Result<Mailbox, MailboxError> {
        let token = Uuid::random();
        let fits = |phys: u64| {
            PhysRange::from_start_len(PhysAddr(phys), PAGE as u64).is_ok_and(|page| {
                reachable
                    .ranges()
                    .iter()
                    .any(|r| r.intersect(&page) == Some(page))
            })
        };
        let mut set_aside = Vec::new();
        let (mut pages, mut held) = (1usize, 0usize);
        loop {
            let picked = LockedPage::pick(pages, fits, |page| {
                page[..8].copy_from_slice(MAGIC);
                page[8..24].copy_from_slice(&token.0);
            })?;
            let block = match picked {
                Ok(map) => {
                    let phys = map.phys();
                    return Ok(Mailbox {
                        map,
                        address: MailboxAddress { phys, token },
                    });
                }
                Err(block) => block,
            };
            held += pages * PAGE;
            if held >= OPEN_LIMIT {
                return Err(MailboxError::Unreachable { held });
            }
            set_aside.push(block);
            pages = (pages * 2).min((64 << 20) / PAGE);
        }
    }

    /// Where the next kernel finds it.
    pub fn address(&self) -> MailboxAddress {
        self.address
    }

    /// The report the other kernel left, if any. Empty again afterwards.
    pub fn take(&mut self) -> Option<Report> {
        if !holds_token(&self.map, &self.address.token) {
            return None;
        }
        let report = Report::decode(&self.map);
        self.map[24..PAGE].fill(0);
        report
    }
}

/// The other kernel's side: writes `report` into the mailbox at `at`
/// through `mem` (/dev/mem), after checking that the page there still
/// holds the magic and the token.
pub fn post(mem: &Path, at: &MailboxAddress, report: &Report) -> Result<(), PostError> {
    let file = PhysFile::open(mem).map_err(|source| PostError::Open {
        path: mem.to_path_buf(),
        source,
    })?;
    let io = |what| {
        move |source| PostError::Io {
            what,
            phys: at.phys,
            source,
        }
    };
    let mut page = vec![0u8; PAGE];
    file.read_at(&mut page, at.phys).map_err(io("reading"))?;
    if !holds_token(&page, &at.token) {
        return Err(PostError::Gone(at.phys));
    }
    page[24..].fill(0);
    report.encode_into(&mut page);
    file.write_at(&page[24..], at.phys + 24)
        .map_err(io("writing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_with_token(token: [u8; 16]) -> Vec<u8> {
        let mut page = vec![0u8; PAGE];
        page[..8].copy_from_slice(MAGIC);
        page[8..24].copy_from_slice(&token);
        page
    }

    #[test]
    fn address_round_trips() {
        let a = MailboxAddress {
            phys: 0x1234_5000,
            token: Uuid(*b"0123456789abcdef"),
        };
        assert_eq!(MailboxAddress::parse(&a.to_string()), Some(a));
        assert_eq!(
            MailboxAddress::parse("0x12345001:30313233343536373839616263646566"),
            None
        );
        assert_eq!(MailboxAddress::parse("0x12345000:3031"), None);
        assert_eq!(MailboxAddress::parse("12345000"), None);
    }

    #[test]
    fn post_writes_only_a_page_holding_the_token() {
        let dir = std::env::temp_dir().join(format!("kjump-mailbox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mem = dir.join("mem");
        let token = [7u8; 16];
        let mut file = vec![0u8; 3 * PAGE];
        file[PAGE..2 * PAGE].copy_from_slice(&page_with_token(token));
        std::fs::write(&mem, &file).unwrap();
        let report = Report {
            kind: ReportKind::Escaped,
            message: "outside".into(),
        };
        let at = MailboxAddress {
            phys: PAGE as u64,
            token: Uuid(token),
        };
        post(&mem, &at, &report).unwrap();
        let after = std::fs::read(&mem).unwrap();
        assert_eq!(Report::decode(&after[PAGE..2 * PAGE]), Some(report.clone()));
        assert_eq!(&after[..PAGE], &file[..PAGE]);
        assert_eq!(&after[2 * PAGE..], &file[2 * PAGE..]);

        // A page that does not hold the token is left alone.
        let other = MailboxAddress {
            phys: 2 * PAGE as u64,
            token: Uuid(token),
        };
        let e = post(&mem, &other, &report).unwrap_err().to_string();
        assert!(e.contains("no longer holds the mailbox"), "{e}");
        let wrong = MailboxAddress {
            phys: PAGE as u64,
            token: Uuid([8u8; 16]),
        };
        assert!(post(&mem, &wrong, &report).is_err());
        assert_eq!(std::fs::read(&mem).unwrap(), after);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_or_long_report_is_handled() {
        let mut page = page_with_token([1; 16]);
        let long = Report {
            kind: ReportKind::Failed,
            message: "é".repeat(PAGE),
        };
        long.encode_into(&mut page);
        let back = Report::decode(&page).unwrap();
        assert!(back.message.len() <= MAX_MESSAGE && long.message.starts_with(&back.message));
        page[HEADER] ^= 1;
        assert_eq!(Report::decode(&page), None);
        assert_eq!(Report::decode(&page_with_token([1; 16])), None);
    }

    #[test]
    fn take_reads_a_report_once() {
        let reachable = MemoryMap::merged(vec![
            PhysRange::new(PhysAddr(0), PhysAddr(u64::MAX)).unwrap()
        ]);
        // Without CAP_SYS_ADMIN pagemap shows no frame: nothing to test.
        let Ok(mut m) = Mailbox::open(&reachable) else {
            return;
        };
        assert_eq!(m.take(), None);
        let report = Report {
            kind: ReportKind::Failed,
            message: "no target".into(),
        };
        report.encode_into(&mut m.map);
        assert_eq!(m.take(), Some(report));
        assert_eq!(m.take(), None);
    }
}
