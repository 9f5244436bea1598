//! A persistent ordered set: a weight-balanced binary tree whose nodes are shared between
//! versions through `Arc`, so a catalog snapshot can be copied in O(1) and changed in
//! O(log n) while every older snapshot stays exactly as it was.
//!
//! What it is for: each [`Catalog`](super::Catalog) keeps its entries in four orders (catalog
//! order, on-disk name, xxHash64, SHA-256). Publishing one file inserts it into each order by
//! copying the O(log n) nodes on its path and sharing everything else with the previous
//! snapshot, instead of sorting and re-indexing the whole folder. Every node also knows the
//! size of its subtree, so an iterator can jump to position `i` in O(log n) (CJP2P lists by
//! position) and a search gives the position of what it finds.
//!
//! ```text
//!   snapshot g          snapshot g+1 (after one insert)
//!       (m)                 (m')            m', r' are new copies; a, l, r.left shared
//!      /   \               /    \
//!    (l)   (r)   ==>     (l)    (r')
//!    /       \                  /  \
//!  (a)       (z)         (r.left)  (z')
//! ```
//!
//! Balance: the weight-balanced scheme with parameters delta = 3 and ratio = 2 (the pair shown
//! correct for single inserts and deletes by Straka, "Adams' Trees Revisited", 2011): for every
//! node, `size(left) <= 3 * size(right)` and the reverse, unless both together hold at most one
//! item. Height is therefore O(log n) (at most about 2.7 log2 n), which also bounds recursion.
//!
//! Out of scope: anything catalog-specific (the orders live in `mod.rs`), mutation of items in
//! place (items are replaced whole), and bulk set operations.

use std::cmp::Ordering;
use std::marker::PhantomData;
use std::sync::Arc;

/// A total order on `T`: two items comparing `Equal` are the same key (the tree keeps one).
pub trait Order<T> {
    fn cmp(a: &T, b: &T) -> Ordering;
}

type Link<T> = Option<Arc<Node<T>>>;

struct Node<T> {
    item: T,
    left: Link<T>,
    right: Link<T>,
    /// Items in this subtree, this one included.
    size: usize,
}

/// Largest allowed weight ratio between the two subtrees of a node.
const DELTA: usize = 3;
/// Decides between a single and a double rotation.
const RATIO: usize = 2;

/// An ordered set of `T` under the order `O`; cloning is O(1) and shares every node.
pub struct Tree<T, O> {
    root: Link<T>,
    order: PhantomData<fn() -> O>,
}

impl<T, O> Clone for Tree<T, O> {
    fn clone(&self) -> Self {
        Tree {
            root: self.root.clone(),
            order: PhantomData,
        }
    }
}

impl<T, O> Default for Tree<T, O> {
    fn default() -> Self {
        Tree {
            root: None,
            order: PhantomData,
        }
    }
}

fn size<T>(link: &Link<T>) -> usize {
    link.as_ref().map_or(0, |n| n.size)
}

fn bin<T>(item: T, left: Link<T>, right: Link<T>) -> Link<T> {
    let size = size(&left) + size(&right) + 1;
    Some(Arc::new(Node {
        item,
        left,
        right,
        size,
    }))
}

/// Joins `left`, `item`, `right` after one insert into or one delete from either side.
fn balance<T: Clone>(item: T, left: Link<T>, right: Link<T>) -> Link<T> {
    let (sl, sr) = (size(&left), size(&right));
    if sl + sr <= 1 {
        bin(item, left, right)
    } else if sr > DELTA * sl {
        rotate_left(item, left, right)
    } else if sl > DELTA * sr {
        rotate_right(item, left, right)
    } else {
        bin(item, left, right)
    }
}

fn rotate_left<T: Clone>(item: T, left: Link<T>, right: Link<T>) -> Link<T> {
    // `right` holds at least two items here (see `balance`); the `else` arms never run.
    let Some(r) = right else {
        return bin(item, left, None);
    };
    if size(&r.left) < RATIO * size(&r.right) {
        bin(
            r.item.clone(),
            bin(item, left, r.left.clone()),
            r.right.clone(),
        )
    } else if let Some(rl) = &r.left {
        bin(
            rl.item.clone(),
            bin(item, left, rl.left.clone()),
            bin(r.item.clone(), rl.right.clone(), r.right.clone()),
        )
    } else {
        bin(item, left, Some(r))
    }
}

fn rotate_right<T: Clone>(item: T, left: Link<T>, right: Link<T>) -> Link<T> {
    let Some(l) = left else {
        return bin(item, None, right);
    };
    if size(&l.right) < RATIO * size(&l.left) {
        bin(
            l.item.clone(),
            l.left.clone(),
            bin(item, l.right.clone(), right),
        )
    } else if let Some(lr) = &l.right {
        bin(
            lr.item.clone(),
            bin(l.item.clone(), l.left.clone(), lr.left.clone()),
            bin(item, lr.right.clone(), right),
        )
    } else {
        bin(item, Some(l), right)
    }
}

fn insert<T: Clone, O: Order<T>>(link: &Link<T>, item: T) -> (Link<T>, Option<T>) {
    let Some(n) = link else {
        return (bin(item, None, None), None);
    };
    match O::cmp(&item, &n.item) {
        Ordering::Less => {
            let (left, old) = insert::<T, O>(&n.left, item);
            (balance(n.item.clone(), left, n.right.clone()), old)
        }
        Ordering::Greater => {
            let (right, old) = insert::<T, O>(&n.right, item);
            (balance(n.item.clone(), n.left.clone(), right), old)
        }
        Ordering::Equal => (
            bin(item, n.left.clone(), n.right.clone()),
            Some(n.item.clone()),
        ),
    }
}

/// `probe(item)` is how `item` compares with the one to remove.
fn remove<T: Clone, F: Fn(&T) -> Ordering>(link: &Link<T>, probe: &F) -> Option<(Link<T>, T)> {
    let n = link.as_ref()?;
    match probe(&n.item) {
        Ordering::Greater => {
            let (left, gone) = remove(&n.left, probe)?;
            Some((balance(n.item.clone(), left, n.right.clone()), gone))
        }
        Ordering::Less => {
            let (right, gone) = remove(&n.right, probe)?;
            Some((balance(n.item.clone(), n.left.clone(), right), gone))
        }
        Ordering::Equal => Some((glue(n.left.clone(), n.right.clone()), n.item.clone())),
    }
}

/// Joins two balanced neighbours whose parent was removed.
fn glue<T: Clone>(left: Link<T>, right: Link<T>) -> Link<T> {
    match (&left, &right) {
        (None, _) => right,
        (_, None) => left,
        (Some(l), Some(r)) => {
            if l.size > r.size {
                let (max, rest) = remove_max(l);
                balance(max, rest, right)
            } else {
                let (min, rest) = remove_min(r);
                balance(min, left, rest)
            }
        }
    }
}

fn remove_min<T: Clone>(n: &Node<T>) -> (T, Link<T>) {
    match &n.left {
        None => (n.item.clone(), n.right.clone()),
        Some(l) => {
            let (min, left) = remove_min(l);
            (min, balance(n.item.clone(), left, n.right.clone()))
        }
    }
}

fn remove_max<T: Clone>(n: &Node<T>) -> (T, Link<T>) {
    match &n.right {
        None => (n.item.clone(), n.left.clone()),
        Some(r) => {
            let (max, right) = remove_max(r);
            (max, balance(n.item.clone(), n.left.clone(), right))
        }
    }
}

fn build<T: Clone>(items: &[T]) -> Link<T> {
    if items.is_empty() {
        return None;
    }
    let mid = items.len() / 2;
    bin(
        items[mid].clone(),
        build(&items[..mid]),
        build(&items[mid + 1..]),
    )
}

impl<T: Clone, O: Order<T>> Tree<T, O> {
    /// A perfectly balanced tree of `items`, which must be sorted by `O` without duplicates
    /// (O(n); checked in debug builds).
    pub fn from_sorted(items: &[T]) -> Self {
        debug_assert!(items
            .windows(2)
            .all(|w| O::cmp(&w[0], &w[1]) == Ordering::Less));
        Tree {
            root: build(items),
            order: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        size(&self.root)
    }

    pub fn is_empty(&self) -> bool {
        self.root.is_none()
    }

    /// Adds `item`, replacing (and returning) the one equal to it, in O(log n).
    pub fn insert(&mut self, item: T) -> Option<T> {
        let (root, old) = insert::<T, O>(&self.root, item);
        self.root = root;
        old
    }

    /// Removes (and returns) the item equal to `item`, in O(log n); nothing is copied when it
    /// is absent.
    pub fn remove(&mut self, item: &T) -> Option<T> {
        let (root, gone) = remove(&self.root, &|x: &T| O::cmp(x, item))?;
        self.root = root;
        Some(gone)
    }

    /// The item for which `probe` (how an item compares with the one sought, consistent with
    /// `O`) gives `Equal`.
    pub fn get_by(&self, probe: impl Fn(&T) -> Ordering) -> Option<&T> {
        let mut link = &self.root;
        while let Some(n) = link {
            match probe(&n.item) {
                Ordering::Less => link = &n.right,
                Ordering::Greater => link = &n.left,
                Ordering::Equal => return Some(&n.item),
            }
        }
        None
    }

    /// Every item in order.
    pub fn iter(&self) -> Iter<'_, T> {
        let mut it = Iter {
            root: self.root.as_deref(),
            stack: Vec::new(),
            next_index: 0,
            len: self.len(),
        };
        it.push_left(self.root.as_deref());
        it
    }

    /// The items from the first one for which `is_before` is false, in order. `is_before` must
    /// hold for a prefix of the order and for nothing after it (e.g. "sorts before KEY").
    /// O(log n) to start.
    pub fn iter_from(&self, is_before: impl Fn(&T) -> bool) -> Iter<'_, T> {
        let mut it = Iter {
            root: self.root.as_deref(),
            stack: Vec::new(),
            next_index: 0,
            len: self.len(),
        };
        let mut link = self.root.as_deref();
        while let Some(n) = link {
            if is_before(&n.item) {
                it.next_index += size(&n.left) + 1;
                link = n.right.as_deref();
            } else {
                it.stack.push(n);
                link = n.left.as_deref();
            }
        }
        it
    }
}

/// In-order iterator; [`nth`](Iterator::nth) (and so `skip`) jumps in O(log n).
pub struct Iter<'a, T> {
    root: Option<&'a Node<T>>,
    /// Nodes whose item and right subtree are still to come; the next item is on top.
    stack: Vec<&'a Node<T>>,
    /// Position of the next item in the whole tree.
    next_index: usize,
    len: usize,
}

impl<'a, T> Iter<'a, T> {
    fn push_left(&mut self, mut link: Option<&'a Node<T>>) {
        while let Some(n) = link {
            self.stack.push(n);
            link = n.left.as_deref();
        }
    }

    /// Positions the iterator on item `index` (< len) by one descent from the root.
    fn seek(&mut self, mut index: usize) {
        self.stack.clear();
        self.next_index = index;
        let mut link = self.root;
        while let Some(n) = link {
            let left = n.left.as_ref().map_or(0, |l| l.size);
            match index.cmp(&left) {
                Ordering::Less => {
                    self.stack.push(n);
                    link = n.left.as_deref();
                }
                Ordering::Equal => {
                    self.stack.push(n);
                    return;
                }
                Ordering::Greater => {
                    index -= left + 1;
                    link = n.right.as_deref();
                }
            }
        }
    }

    /// Position in the whole tree of the item `next` would return (`len` at the end).
    pub fn next_position(&self) -> usize {
        if self.stack.is_empty() {
            self.len
        } else {
            self.next_index
        }
    }
}

impl<'a, T> Iterator for Iter<'a, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        let n = self.stack.pop()?;
        self.push_left(n.right.as_deref());
        self.next_index += 1;
        Some(&n.item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.len - self.next_position();
        (left, Some(left))
    }

    fn nth(&mut self, n: usize) -> Option<&'a T> {
        if n == 0 {
            return self.next();
        }
        match self.next_position().checked_add(n) {
            Some(target) if target < self.len => {
                self.seek(target);
                self.next()
            }
            _ => {
                self.stack.clear();
                self.next_index = self.len;
                None
            }
        }
    }
}

impl<T> ExactSizeIterator for Iter<'_, T> {}

#[cfg(test)]
impl<T: Clone, O: Order<T>> Tree<T, O> {
    /// Checks sizes, balance and order of every node; panics with what is wrong.
    pub fn check(&self) {
        fn walk<T, O: Order<T>>(link: &Link<T>) -> usize {
            let Some(n) = link else { return 0 };
            let (sl, sr) = (walk::<T, O>(&n.left), walk::<T, O>(&n.right));
            assert_eq!(n.size, sl + sr + 1, "size field");
            assert!(
                sl + sr <= 1 || (sl <= DELTA * sr && sr <= DELTA * sl),
                "unbalanced: {sl} / {sr}"
            );
            if let Some(l) = &n.left {
                assert_eq!(O::cmp(&l.item, &n.item), Ordering::Less, "order");
            }
            if let Some(r) = &n.right {
                assert_eq!(O::cmp(&r.item, &n.item), Ordering::Greater, "order");
            }
            n.size
        }
        walk::<T, O>(&self.root);
        let v: Vec<&T> = self.iter().collect();
        assert!(v.windows(2).all(|w| O::cmp(w[0], w[1]) == Ordering::Less));
    }

    /// Nodes of `self` not shared with `older`: what a change from `older` allocated.
    pub fn fresh_nodes_since(&self, older: &Self) -> usize {
        fn collect<T>(link: &Link<T>, into: &mut std::collections::HashSet<*const Node<T>>) {
            if let Some(n) = link {
                into.insert(Arc::as_ptr(n));
                collect(&n.left, into);
                collect(&n.right, into);
            }
        }
        fn count<T>(link: &Link<T>, old: &std::collections::HashSet<*const Node<T>>) -> usize {
            match link {
                Some(n) if !old.contains(&Arc::as_ptr(n)) => {
                    1 + count(&n.left, old) + count(&n.right, old)
                }
                _ => 0,
            }
        }
        let mut old = std::collections::HashSet::new();
        collect(&older.root, &mut old);
        count(&self.root, &old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct ByValue;
    impl Order<u32> for ByValue {
        fn cmp(a: &u32, b: &u32) -> Ordering {
            a.cmp(b)
        }
    }
    type T = Tree<u32, ByValue>;

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    #[test]
    fn random_inserts_and_removes_match_a_btreeset_and_stay_balanced() {
        let mut next = rng(0x9e37_79b9_7f4a_7c15);
        let mut t = T::default();
        let mut model = std::collections::BTreeSet::new();
        for step in 0..20_000 {
            let v = (next() % 2_000) as u32;
            if next() % 3 == 0 {
                assert_eq!(t.remove(&v), model.take(&v), "remove {v}");
            } else {
                assert_eq!(t.insert(v).is_some(), !model.insert(v), "insert {v}");
            }
            if step % 997 == 0 {
                t.check();
                assert!(t.iter().copied().eq(model.iter().copied()));
            }
        }
        t.check();
        assert_eq!(t.len(), model.len());
        assert!(t.iter().copied().eq(model.iter().copied()));
    }

    #[test]
    fn old_versions_never_change() {
        let mut t = T::from_sorted(&(0..100).collect::<Vec<_>>());
        let before = t.clone();
        t.insert(1000);
        t.remove(&50);
        assert!(before.iter().copied().eq(0..100));
        assert_eq!(t.len(), 100);
        assert!(t.get_by(|x| x.cmp(&50)).is_none());
        assert_eq!(before.get_by(|x| x.cmp(&50)), Some(&50));
    }

    #[test]
    fn one_insert_copies_one_path() {
        let items: Vec<u32> = (0..100_000).map(|i| i * 2).collect();
        let t = T::from_sorted(&items);
        t.check();
        let mut u = t.clone();
        u.insert(12_345);
        u.check();
        let fresh = u.fresh_nodes_since(&t);
        // One path of a weight-balanced tree of 100,001 items, plus a rotation's nodes.
        assert!(fresh <= 2 * 48, "{fresh} new nodes for one insert");
        let mut w = u.clone();
        w.remove(&12_345);
        assert!(w.fresh_nodes_since(&u) <= 2 * 48);
        // Removing what is absent copies nothing.
        let mut x = w.clone();
        assert_eq!(x.remove(&1), None);
        assert_eq!(x.fresh_nodes_since(&w), 0);
    }

    #[test]
    fn iter_from_and_nth_jump_to_positions() {
        let items: Vec<u32> = (0..1000).map(|i| i * 3).collect();
        let t = T::from_sorted(&items);
        for start in [0u32, 1, 2, 3, 299, 300, 2997, 2998, 5000] {
            let got: Vec<u32> = t.iter_from(|x| *x < start).copied().collect();
            let want: Vec<u32> = items.iter().copied().filter(|x| *x >= start).collect();
            assert_eq!(got, want, "from {start}");
            let it = t.iter_from(|x| *x < start);
            assert_eq!(it.len(), want.len());
            assert_eq!(it.next_position(), 1000 - want.len());
        }
        for skip in [0usize, 1, 17, 500, 999, 1000, 5000, usize::MAX] {
            let got: Vec<u32> = t.iter().skip(skip).take(3).copied().collect();
            let want: Vec<u32> = items.iter().copied().skip(skip).take(3).collect();
            assert_eq!(got, want, "skip {skip}");
        }
        // nth after some progress, and from an iter_from start.
        let mut it = t.iter_from(|x| *x < 30);
        assert_eq!(it.next(), Some(&30));
        assert_eq!(it.nth(9), Some(&60));
        assert_eq!(it.next(), Some(&63));
        assert_eq!(it.len(), 1000 - 22);
        assert_eq!(it.nth(usize::MAX), None);
        assert_eq!(it.next(), None);
        assert!(T::default().iter().next().is_none());
        assert!(T::default().iter().nth(3).is_none());
        // nth to the last item, and to exactly one past it.
        assert_eq!(t.iter().nth(999), items.last());
        let mut it = t.iter();
        assert_eq!(it.nth(1000), None);
        assert_eq!((it.len(), it.next()), (0, None));
        let mut it = t.iter();
        it.next();
        assert_eq!(it.nth(999), None);
        assert_eq!((it.len(), it.next()), (0, None));
    }
}
