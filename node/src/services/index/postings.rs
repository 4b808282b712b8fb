//! The documents holding one term. Most terms of a large fleet (a thing's name, its id, a
//! timestamp) are held by one document: they cost a number, not a bitmap.

use roaring::RoaringBitmap;

#[derive(Debug, Clone)]
pub enum Posting {
    One(u32),
    Many(RoaringBitmap),
}

impl Posting {
    pub fn new(doc: u32) -> Self {
        Posting::One(doc)
    }

    pub fn insert(&mut self, doc: u32) {
        match self {
            Posting::One(only) if *only == doc => {}
            Posting::One(only) => {
                let mut many = RoaringBitmap::new();
                many.insert(*only);
                many.insert(doc);
                *self = Posting::Many(many);
            }
            Posting::Many(many) => {
                many.insert(doc);
            }
        }
    }

    /// Removes `doc`; true when no document is left.
    pub fn remove(&mut self, doc: u32) -> bool {
        match self {
            Posting::One(only) => *only == doc,
            Posting::Many(many) => {
                many.remove(doc);
                match many.len() {
                    0 => true,
                    1 => {
                        if let Some(last) = many.min() {
                            *self = Posting::One(last);
                        }
                        false
                    }
                    _ => false,
                }
            }
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            Posting::One(_) => 1,
            Posting::Many(many) => many.len(),
        }
    }

    /// How many of its documents are in `set`.
    pub fn count_in(&self, set: &RoaringBitmap) -> u64 {
        match self {
            Posting::One(doc) => u64::from(set.contains(*doc)),
            Posting::Many(many) => many.intersection_len(set),
        }
    }

    pub fn add_to(&self, set: &mut RoaringBitmap) {
        match self {
            Posting::One(doc) => {
                set.insert(*doc);
            }
            Posting::Many(many) => *set |= many,
        }
    }

    pub fn to_bitmap(&self) -> RoaringBitmap {
        match self {
            Posting::One(doc) => std::iter::once(*doc).collect(),
            Posting::Many(many) => many.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_posting_grows_into_a_bitmap_and_shrinks_back() {
        let mut posting = Posting::new(7);
        posting.insert(7);
        assert_eq!(posting.len(), 1);
        posting.insert(9);
        assert!(matches!(posting, Posting::Many(_)));
        assert!(!posting.remove(7));
        assert!(matches!(posting, Posting::One(9)));
        let set: RoaringBitmap = [1, 9].into_iter().collect();
        assert_eq!(posting.count_in(&set), 1);
        assert!(posting.remove(9));
    }
}
