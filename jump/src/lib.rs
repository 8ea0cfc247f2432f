//! What the kernel that jumps runs: `kjump hibernate` in the saved kernel
//! (A) and `kjump resume` early in a normal boot (R0). Each checks what it
//! can, loads a confined kernel with kexec-tools and a manifest
//! ([`next`]), jumps into it with its context preserved, and goes on when
//! that kernel jumps back: A once its image is resumed, or at once after a
//! checkpoint; R0 when the restore kernel hands back without resuming.
//!
//! The confined kernels themselves (the capture kernel B, the restore
//! kernel R) run kjump as `/init`: that is `kjump-init`. What passes
//! between the two sides is `kjump-handoff`.

#![forbid(unsafe_code)]

pub mod hibernate;
pub mod next;
pub mod preflight;
pub mod resume;
