package spool

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// ErrLocked is returned by Open when another process has the spool open.
var ErrLocked = errors.New("spool: in use by another process")

// lockDir takes the spool's lock, before anything in it is touched: Open
// sweeps leftovers and creates a generation while meta, whose Badger lock
// once served as the spool's, is still opening. The lock is the kernel's,
// on the directory: a crash releases it.
func lockDir(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("lock spool: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, dir)
		}
		return nil, fmt.Errorf("lock spool %s: %w", dir, err)
	}
	return f, nil
}

// unlockDir releases the lock lockDir took. Unlocked, not only closed: a
// child process forked at that moment holds a copy of the file for an
// instant, and a lock released by closing lasts as long as any copy.
func unlockDir(f *os.File) {
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	_ = f.Close()
}
