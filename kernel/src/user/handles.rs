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
        let free = self.slots.iter().position(Option::is_none);
        let index = match free {
            Some(i) => i,
            None if self.slots.len() < MAX_HANDLES => {
                self.slots.try_reserve(1).map_err(|_| Full)?;
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return Err(Full),
        };
        let slot = self.slots.get_mut(index).ok_or(Full)?;
        *slot = Some(object);
        Handle::try_from(index).map_err(|_| Full)
    }

    /// The object of a handle argument (a register: values beyond u32 name nothing).
    pub fn get(&self, handle: u64) -> Option<&T> {
        self.slots.get(usize::try_from(handle).ok()?)?.as_ref()
    }

    /// Take the object out; the handle becomes free.
    pub fn remove(&mut self, handle: u64) -> Option<T> {
        self.slots.get_mut(usize::try_from(handle).ok()?)?.take()
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
