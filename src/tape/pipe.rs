//! A bounded in-process pipe between the thread that makes or takes a stream and the
//! thread that drives the tape: whole buffers pass through a bounded channel (at most
//! `depth` buffers of `chunk` bytes in flight), and the end of the data is said
//! explicitly, so a writer that stops early (an error, a panic) is never taken for a
//! complete stream.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

enum Msg {
    Data(Vec<u8>),
    /// The writer finished: everything was sent.
    End,
    /// The writer failed: the reader's next read returns this; `true` when what was
    /// read is damaged (an error of kind `InvalidData`), not merely unreadable.
    Fail(String, bool),
}

/// The writing end. Dropped after [`PipeWriter::complete_flag`] was set (or after
/// [`PipeWriter::close`]) it ends the data; dropped otherwise the reader gets an error.
pub struct PipeWriter {
    tx: SyncSender<Msg>,
    buf: Vec<u8>,
    chunk: usize,
    complete: Arc<AtomicBool>,
}

/// The reading end.
pub struct PipeReader {
    rx: Receiver<Msg>,
    cur: Vec<u8>,
    pos: usize,
    ended: bool,
}

/// A pipe passing buffers of `chunk` bytes, at most `depth` of them in flight.
pub fn pipe(chunk: usize, depth: usize) -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(depth.max(1));
    (
        PipeWriter {
            tx,
            buf: Vec::with_capacity(chunk),
            chunk: chunk.max(1),
            complete: Arc::new(AtomicBool::new(false)),
        },
        PipeReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            ended: false,
        },
    )
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the tape side of the stream stopped",
    )
}

impl PipeWriter {
    /// A flag that, once set, makes dropping the writer end the data (for a writer
    /// handed on as a `Box<dyn Write>`).
    pub fn complete_flag(&self) -> Arc<AtomicBool> {
        self.complete.clone()
    }

    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
        self.tx.send(Msg::Data(full)).map_err(|_| gone())
    }

    /// End the data: the reader reads to its end.
    pub fn close(mut self) -> io::Result<()> {
        self.complete.store(true, Ordering::SeqCst);
        self.send_buf()
        // Drop sends the end.
    }

    /// Stop with an error the reader returns.
    pub fn fail(mut self, why: String) {
        self.buf.clear();
        let _ = self.tx.send(Msg::Fail(why, false));
    }

    /// Stop with an error the reader returns as damage (kind `InvalidData`).
    pub fn fail_damaged(mut self, why: String) {
        self.buf.clear();
        let _ = self.tx.send(Msg::Fail(why, true));
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (self.chunk - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.chunk {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        if self.complete.load(Ordering::SeqCst) && self.send_buf().is_ok() {
            let _ = self.tx.send(Msg::End);
        }
    }
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.ended || out.is_empty() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Msg::Data(d)) => {
                    self.cur = d;
                    self.pos = 0;
                }
                Ok(Msg::End) => {
                    self.ended = true;
                    return Ok(0);
                }
                Ok(Msg::Fail(why, false)) => return Err(io::Error::other(why)),
                Ok(Msg::Fail(why, true)) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, why))
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the stream stopped before its end",
                    ))
                }
            }
        }
        let n = (self.cur.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(mut r: PipeReader) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok(v)
    }

    #[test]
    fn passes_everything_once_closed() {
        let (mut w, r) = pipe(7, 2);
        let t = std::thread::spawn(move || read_all(r));
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        w.write_all(&data).unwrap();
        w.close().unwrap();
        assert_eq!(t.join().unwrap().unwrap(), data);
    }

    #[test]
    fn a_writer_dropped_unfinished_is_an_error_not_an_end() {
        let (mut w, r) = pipe(4, 2);
        let t = std::thread::spawn(move || read_all(r));
        w.write_all(b"abcdefg").unwrap();
        drop(w);
        let e = t.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(e.to_string(), "the stream stopped before its end");
    }

    #[test]
    fn the_flag_makes_a_drop_the_end_and_a_failure_is_said() {
        let (mut w, r) = pipe(4, 2);
        let flag = w.complete_flag();
        let t = std::thread::spawn(move || read_all(r));
        w.write_all(b"abcdefg").unwrap();
        flag.store(true, Ordering::SeqCst);
        drop(w);
        assert_eq!(t.join().unwrap().unwrap(), b"abcdefg");
        let (mut w, r) = pipe(4, 2);
        let t = std::thread::spawn(move || read_all(r));
        w.write_all(b"abcd").unwrap();
        w.fail_damaged("tape VT1, file 2, block 3: damaged".into());
        let e = t.join().unwrap().unwrap_err();
        assert_eq!(e.to_string(), "tape VT1, file 2, block 3: damaged");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
