//! The shared wire pieces: [`FrameAccumulator`] (whole, in pieces, and read exactly as much as
//! it wants), [`Stash`] gathering length-prefixed fields, and [`Cursor`] driven by the input.

use super::alloc::Meter;
use super::{check_split, cuts, Log, Script};
use crate::wire::{Cursor, FieldTooLong, FrameAccumulator, Gathered, Stash, FRAME_HEADER};

/// `seed | max/4 | min | stream`: the same stream through the accumulator, the stash (fields
/// of one length byte and that many bytes, 0xff malformed) and the cursor.
pub fn wire_frame(data: &[u8]) {
    let mut s = Script::new(data);
    let seed = s.u8();
    let max = u32::from(s.u8()) * 4;
    let min = u32::from(s.u8() % 8);
    let input = s.rest();
    let run = |ends: &[usize]| frames(max, min, input, ends);
    let whole = run(&[input.len()]);
    check_split("frame accumulator", &whole, &run(&cuts(seed, input.len())));
    check_split(
        "frame accumulator read as wanted",
        &whole,
        &exact(max, min, input),
    );
    let whole = fields(max as usize, input, &[input.len()]);
    check_split(
        "stash",
        &whole,
        &fields(max as usize, input, &cuts(seed, input.len())),
    );
    cursor(input);
}

fn frames(max: u32, min: u32, input: &[u8], ends: &[usize]) -> Log {
    let mut acc = FrameAccumulator::new(max).with_min(min);
    let (mut log, mut prev, mut taken) = (Log::default(), 0, 0);
    for &end in ends {
        acc.extend(&input[prev..end]);
        prev = end;
        loop {
            match acc.next_frame() {
                Ok(Some(f)) => {
                    assert!(
                        (min..=max).contains(&(f.len() as u32)),
                        "frame length out of bounds"
                    );
                    taken += FRAME_HEADER + f.len();
                    log.event(f);
                }
                Ok(None) => break,
                Err(e) => {
                    log.error(e);
                    return log;
                }
            }
        }
    }
    assert_eq!(acc.is_between_frames(), taken == input.len());
    assert_eq!(
        acc.take_buffered(),
        &input[taken..],
        "bytes kept for the next frame"
    );
    log
}

/// Reads only what the accumulator wants, as filestorage's exact reads and FastDP's JMSG do.
fn exact(max: u32, min: u32, input: &[u8]) -> Log {
    let mut acc = FrameAccumulator::new(max).with_min(min);
    let (mut log, mut pos, mut meter) = (Log::default(), 0, Meter::default());
    loop {
        let want = acc.wanted();
        assert!(
            want <= FRAME_HEADER + max as usize,
            "wants more than a frame"
        );
        assert!(
            acc.buffered() + want <= FRAME_HEADER + max as usize,
            "buffers past a frame"
        );
        let n = want.min(input.len() - pos);
        meter.enter();
        acc.extend(&input[pos..pos + n]);
        meter.leave();
        pos += n;
        meter.enter();
        let r = acc.next_frame();
        meter.leave();
        match r {
            Ok(Some(f)) => log.event(f),
            Ok(None) if n == 0 => break,
            Ok(None) => {}
            Err(e) => {
                assert_eq!(acc.wanted(), 0, "a failed accumulator wants more");
                log.error(e);
                break;
            }
        }
    }
    // Spent frames are dropped once they are half the buffer: a few frames at most.
    meter.check("frame accumulator", 4 * (FRAME_HEADER + max as usize) + 64);
    log
}

/// One length byte and that many bytes; 0xff is malformed.
fn counted(p: &[u8]) -> Result<usize, Bad> {
    match p.first() {
        None => Ok(1),
        Some(0xff) => Err(Bad::Malformed),
        Some(&n) => Ok(1 + usize::from(n)),
    }
}

#[derive(Debug)]
enum Bad {
    Malformed,
    // Read through Debug in the logs.
    #[allow(dead_code)]
    TooLong(FieldTooLong),
}

impl From<FieldTooLong> for Bad {
    fn from(e: FieldTooLong) -> Bad {
        Bad::TooLong(e)
    }
}

fn fields(max: usize, input: &[u8], ends: &[usize]) -> Log {
    let mut stash = Stash::new(max);
    let (mut log, mut prev) = (Log::default(), 0);
    for &end in ends {
        let mut piece = &input[prev..end];
        prev = end;
        while !piece.is_empty() {
            let fresh = stash.held().is_empty();
            match stash.gather(piece, counted) {
                Ok(Gathered::Whole { taken, field }) => {
                    assert!(taken <= piece.len() && field.len() <= max, "field bounds");
                    if fresh {
                        assert_eq!(field.as_ptr(), piece.as_ptr(), "a whole field was copied");
                    }
                    log.event(field);
                    piece = &piece[taken..];
                }
                Ok(Gathered::Partial) => piece = &[],
                Err(e) => {
                    log.error(e);
                    return log;
                }
            }
            assert!(
                stash.held().len() <= max && stash.capacity() <= max,
                "stash past its max"
            );
        }
    }
    log
}

/// Reads `input` with a cursor, the operations taken from `input` itself.
fn cursor(input: &[u8]) {
    let mut ops = Script::new(input);
    let mut c = Cursor::new(input);
    while !ops.is_empty() {
        let before = c.position();
        let n = usize::from(ops.u8() % 16);
        let ok = match ops.u8() % 8 {
            0 => c.take(n).map(|b| assert_eq!(b.len(), n)).is_some(),
            1 => c.peek(n).is_some_and(|b| b == &input[before..before + n]),
            2 => c.skip(n).is_some(),
            3 => c.u16_be().is_some(),
            4 => c.u32_le().is_some(),
            5 => c.u64_be().is_some(),
            6 => c
                .sub(n)
                .is_some_and(|s| s.remaining() == n && s.expect_empty().is_err() == (n > 0)),
            _ => c.u8().is_some(),
        };
        assert!(
            ok || c.position() == before,
            "a failed read moved the cursor"
        );
        assert_eq!(c.position() + c.remaining(), input.len());
        assert_eq!(c.rest(), &input[c.position()..]);
        assert_eq!(c.expect_empty().is_ok(), c.is_empty());
    }
}
