//! Who is calling, and which pages that caller may name.
//!
//! A guest can run at several VMPLs (spec 58019 section 2): the most privileged guest VMPL
//! (the startup vCPU's, usually VMPL1) and less privileged ones it sets up itself
//! (VMPL2/3). Every VMPL may call the SVSM, and the SVSM acts with VMPL0's power. Without
//! a check, a VMPL2 caller could make the SVSM read, write, validate away or take over
//! memory that VMPL1 keeps from it (a confused deputy). So every page a call reads,
//! writes or acts on must be accessible to the caller's own VMPL with the access the call
//! needs.
//!
//! For the most privileged guest VMPL the SVSM's own records already decide it: only VMPL0
//! can take access away from that VMPL, and the SVSM does so exactly for the pages it
//! tracks (its region, VMSAs, deposited pages, the secrets page's write access). For a
//! less privileged caller the permissions live in the RMP, where the guest's more
//! privileged VMPL sets them with RMPADJUST; the platform reads them
//! ([`Platform::vmpl_permissions`], RMPQUERY on SNP). A platform that cannot read them
//! answers `None`, and such a caller may then name no page at all.
//!
//! The check is a snapshot: the more privileged guest VMPL may change the permissions
//! right after it. That VMPL is the one the check protects, so it only races itself.

use crate::addr::PageRange;
use crate::error::{AddressConflict, CallError, CallResult};
use crate::platform::Platform;
use abi::hw::rmpadjust::{PERM_READ, PERM_WRITE};

/// The VMPL of a call and the most privileged guest VMPL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// VMPL of the calling vCPU (from its VMSA).
    pub vmpl: u8,
    /// The most privileged VMPL the guest runs at (the startup vCPU's).
    pub top_vmpl: u8,
}

/// The access a call needs to a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The SVSM copies from the page.
    Read,
    /// The SVSM writes the page, or changes it for the caller (invalidates it, takes it
    /// as a deposit or a VMSA): what the caller could do itself with write access.
    Write,
}

impl Access {
    fn perms(self) -> u8 {
        match self {
            Access::Read => PERM_READ,
            Access::Write => PERM_READ | PERM_WRITE,
        }
    }
}

impl Caller {
    /// A caller at the most privileged guest VMPL, whose access the SVSM's records decide.
    pub fn is_top(self) -> bool {
        self.vmpl <= self.top_vmpl
    }

    /// Every page of `range` is accessible to the caller's VMPL with `access`; otherwise
    /// `INVALID_ADDRESS` naming the first page that is not.
    pub fn check<P: Platform + ?Sized>(self, p: &P, range: PageRange, access: Access) -> CallResult<()> {
        if self.is_top() {
            return Ok(());
        }
        let need = access.perms();
        for page in range.iter() {
            match p.vmpl_permissions(page, self.vmpl) {
                Some(perms) if perms & need == need => {}
                _ => return Err(CallError::address(page.gpa(), AddressConflict::NotCallers)),
            }
        }
        Ok(())
    }
}
