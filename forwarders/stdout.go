package forwarders

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/spillwayhq/spillway/spool"
)

// lineForwarder writes one JSON event per line: to a writer (stdout://) or
// appended to a file (file:///path), for development and the zero-setup
// first run.
type lineForwarder struct {
	kind string
	mu   sync.Mutex // one batch's lines stay together
	w    io.Writer
	f    *os.File // file kind only
	path string   // file kind only
	buf  []byte   // under mu
	// closed guards against writing to a file Close has closed, and
	// closeErr is what the first Close returned (both under mu).
	closed   bool
	closeErr error
}

var _ Forwarder = (*lineForwarder)(nil)

func newStdout(d Destination) *lineForwarder {
	w := d.Output
	if w == nil {
		w = os.Stdout
	}
	return &lineForwarder{kind: KindStdout, w: w}
}

// openFile opens the file at start-up, so that a bad path fails fast.
func openFile(d Destination) (*lineForwarder, error) {
	f, err := openAppend(d.URL)
	if err != nil {
		return nil, fmt.Errorf("destination %s: open file: %w", d.Name, err)
	}
	return &lineForwarder{kind: KindFile, w: f, f: f, path: d.URL}, nil
}

// openAppend opens path for appending, creating it 0600: events carry
// personal data.
func openAppend(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
}

// reopenIfRotated follows the path to a new file once the one being
// written was renamed or removed (logrotate, an operator), as tail -F
// does: writing on into a file nobody can find by its name would leave
// the new one empty. What was written before is synced already.
func (f *lineForwarder) reopenIfRotated() error {
	cur, err := f.f.Stat()
	if err != nil {
		return err
	}
	if named, err := os.Stat(f.path); err == nil && os.SameFile(cur, named) {
		return nil
	}
	nf, err := openAppend(f.path)
	if err != nil {
		return err
	}
	_ = f.f.Close()
	f.f, f.w = nf, nf
	return nil
}

func (f *lineForwarder) Kind() string { return f.kind }

// Send writes the batch in one write. For a file it returns only once the
// lines are fsynced: the spool's copy is acknowledged after Send, so the
// file must be at least as durable.
func (f *lineForwarder) Send(ctx context.Context, batch []spool.Record) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return &RetryableError{Err: errors.New("write: forwarder closed")}
	}
	f.buf = appendNDJSON(f.buf[:0], batch)
	defer func() {
		if cap(f.buf) > 4*DefaultBatchBytes {
			f.buf = nil
		}
	}()
	if f.f == nil {
		if _, err := f.w.Write(f.buf); err != nil {
			return &RetryableError{Err: fmt.Errorf("write: %w", err)}
		}
		return nil
	}
	return f.appendFile()
}

// appendFile writes and fsyncs f.buf. On failure it cuts the file back to
// where it was, so that a half-written line does not glue itself to the
// retry's first line.
func (f *lineForwarder) appendFile() error {
	if err := f.reopenIfRotated(); err != nil {
		return &RetryableError{Err: fmt.Errorf("reopen %s: %w", f.path, err)}
	}
	end, err := f.f.Seek(0, io.SeekEnd)
	if err != nil {
		return &RetryableError{Err: fmt.Errorf("seek: %w", err)}
	}
	_, err = f.f.Write(f.buf)
	if err == nil {
		err = f.f.Sync()
	}
	if err != nil {
		_ = f.f.Truncate(end)
		return &RetryableError{Err: fmt.Errorf("write: %w", err)}
	}
	return nil
}

// Close syncs and closes a file; stdout is left open, as it is not ours.
// Later calls return the first call's error.
func (f *lineForwarder) Close(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return f.closeErr
	}
	f.closed = true
	if f.f == nil {
		return nil
	}
	if err := f.f.Sync(); err != nil {
		_ = f.f.Close()
		f.closeErr = fmt.Errorf("sync file: %w", err)
	} else if err := f.f.Close(); err != nil {
		f.closeErr = fmt.Errorf("close file: %w", err)
	}
	return f.closeErr
}
