//! A process's object handles: small integers, local to the process, naming objects that
//! may be shared (docs/syscalls.md "Objects and handles").
//!
//! A new handle takes the lowest free number, as COCONUT's `Task::add_obj` does, so a
//! process's handles stay dense and a closed number is reused. The table has a fixed
//! limit: a process that opens objects in a loop gets `NoMem`, not the SVSM's heap.

use alloc::vec::Vec;

/// Most handles one process may hold.
pub const MAX_HANDLES: usize = 64;

/// A handle number as the process sees it.
pub type Handle = u32;

#[derive(Debug)]
pub struct HandleTable<T> {
    slots: Vec<Option<T>>,
}

/// The table is full (or the heap could not grow it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

impl<T> Default for HandleTable<T> {
    fn default() -> Self {
        Self { slots: Vec::new() }
    }
}

impl<T> HandleTable<T> {
    /// Store `object` under the lowest free handle.
    pub fn insert(&mut self, object: T) -> Result<Handle, Full> {
        self.insert_or_return(object).map_err(|_| Full)
    }

    /// [`Self::insert`], giving the object back when the table is full.
    pub fn insert_or_return(&mut self, object: T) -> Result<Handle, T> {
        let free = self.slots.iter().position(Option::is_none);
        let index = match free {
            Some(i) => i,
            None if self.slots.len() < MAX_HANDLES => {
                if self.slots.try_reserve(1).is_err() {
                    return Err(object);
                }
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return Err(object),
        };
        match (self.slots.get_mut(index), Handle::try_from(index)) {
            (Some(slot), Ok(handle)) => {
                *slot = Some(object);
                Ok(handle)
            }
            _ => Err(object),
        }
    }

    /// Room for `n` more handles without the heap (an EXEC makes it before it moves any).
    pub fn reserve(&mut self, n: usize) -> Result<(), Full> {
        let free = self.slots.iter().filter(|s| s.is_none()).count();
        let grow = n.saturating_sub(free);
        if self.slots.len().saturating_add(grow) > MAX_HANDLES {
            return Err(Full);
        }
        self.slots.try_reserve(grow).map_err(|_| Full)
    }

    /// The object of a handle argument (a register: values beyond u32 name nothing).
    pub fn get(&self, handle: u64) -> Option<&T> {
        self.slots.get(usize::try_from(handle).ok()?)?.as_ref()
    }

    /// Take the object out; the handle becomes free.
    pub fn remove(&mut self, handle: u64) -> Option<T> {
        self.slots.get_mut(usize::try_from(handle).ok()?)?.take()
    }

    /// Put `object` back under `handle`, which must be free (an undone move): `Err` with
    /// the object if the handle is taken or was never made.
    pub fn put_back(&mut self, handle: Handle, object: T) -> Result<(), T> {
        match usize::try_from(handle).ok().and_then(|i| self.slots.get_mut(i)) {
            Some(slot @ None) => {
                *slot = Some(object);
                Ok(())
            }
            _ => Err(object),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every object, emptying the table (a process that ends).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.slots.drain(..).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_free_handle_is_reused() {
        let mut t = HandleTable::default();
        assert_eq!((t.insert('a'), t.insert('b'), t.insert('c')), (Ok(0), Ok(1), Ok(2)));
        assert_eq!(t.remove(1), Some('b'));
        assert_eq!(t.get(1), None);
        assert_eq!(t.insert('d'), Ok(1));
        assert_eq!(t.get(1), Some(&'d'));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_removed_object_goes_back_under_its_own_handle_only() {
        let mut t = HandleTable::default();
        assert_eq!((t.insert('a'), t.insert('b')), (Ok(0), Ok(1)));
        let b = t.remove(1).unwrap();
        assert_eq!(t.put_back(0, 'x'), Err('x'), "handle 0 is taken");
        assert_eq!(t.put_back(5, 'x'), Err('x'), "handle 5 was never made");
        assert_eq!(t.put_back(1, b), Ok(()));
        assert_eq!(t.get(1), Some(&'b'));
    }

    #[test]
    fn the_table_has_a_limit_and_foreign_numbers_name_nothing() {
        let mut t = HandleTable::default();
        for i in 0..MAX_HANDLES {
            assert_eq!(t.insert(i), Ok(i as Handle));
        }
        assert_eq!(t.insert(99), Err(Full));
        assert_eq!(t.get(u64::from(u32::MAX)), None);
        assert_eq!(t.get(1 << 32), None);
        assert_eq!(t.remove(1 << 40), None);
        assert_eq!(t.drain().count(), MAX_HANDLES);
        assert!(t.is_empty());
    }
}
