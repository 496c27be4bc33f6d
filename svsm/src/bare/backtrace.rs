//! Frame-pointer backtraces (the image is built with frame pointers): follow the RBP
//! chain from a starting frame, print each return address with the function it falls in.
//! The walk only reads memory inside the image and the boot/IST stacks it knows are
//! mapped, so a corrupt chain ends the trace instead of faulting again.
#![expect(unsafe_code, reason = "walks frame pointers through the SVSM's own stack")]

use super::symbols;

const MAX_FRAMES: usize = 32;

/// Is `[addr, addr + 16)` readable SVSM memory (identity-mapped, below 4 GiB)?
fn readable(addr: u64) -> bool {
    addr != 0 && addr.is_multiple_of(8) && addr.checked_add(16).is_some_and(|end| end <= 1 << 32)
}

fn line(n: usize, addr: u64) {
    match symbols::lookup(addr) {
        Some((name, offset)) => println!("  #{n:<2} {addr:#018x} {name}+{offset:#x}"),
        None => println!("  #{n:<2} {addr:#018x} ?"),
    }
}

/// Print the backtrace of the code at `rip` whose frame pointer is `rbp`.
pub fn print(rip: u64, rbp: u64) {
    println!("backtrace:");
    line(0, rip);
    walk(1, rbp);
}

/// The backtrace of a fault at `rip` with stack pointer `rsp`. When `rip` is no function
/// of the image (a call into data, a corrupt pointer), the word on top of the stack is
/// most likely the return address the bad call pushed: it is printed as the caller.
pub fn print_fault(rip: u64, rsp: u64, rbp: u64) {
    println!("backtrace:");
    line(0, rip);
    let mut n = 1;
    if symbols::lookup(rip).is_none() && readable(rsp) {
        // SAFETY: `readable` checked the word lies in identity-mapped memory below 4 GiB;
        // it is read by value.
        let ret = unsafe { (rsp as *const u64).read_volatile() };
        if symbols::lookup(ret).is_some() {
            line(n, ret);
            n += 1;
        }
    }
    walk(n, rbp);
}

/// Print the return addresses of the frame chain from `rbp`, numbered from `first`.
fn walk(first: usize, mut rbp: u64) {
    for n in first..MAX_FRAMES {
        if !readable(rbp) {
            break;
        }
        // SAFETY: `readable` checked the two words lie in identity-mapped memory below
        // 4 GiB; they are read by value and no reference escapes.
        let (next, ret) = unsafe { ((rbp as *const u64).read_volatile(), ((rbp + 8) as *const u64).read_volatile()) };
        if ret == 0 {
            break;
        }
        line(n, ret);
        if next <= rbp {
            break;
        }
        rbp = next;
    }
}

/// The caller's backtrace (for panics).
#[inline(always)]
pub fn print_here() {
    let (rip, rbp) = super::cpu::here();
    print(rip, rbp);
}
