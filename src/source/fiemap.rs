//! (placeholder: FIEMAP extent maps and FICLONE reflink copies)
