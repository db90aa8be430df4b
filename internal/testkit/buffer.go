package testkit

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// Buffer is a bytes.Buffer that goroutines may write to while a test reads
// it: a logger's output, a process's stdout or stderr, a stdout://
// destination. The zero value is ready to use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

var _ io.Writer = (*Buffer)(nil)

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Bytes returns a copy of everything written so far.
func (b *Buffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.b.Bytes())
}

// Lines returns the lines written so far that contain substr, each with
// its newline; every line when substr is empty.
func (b *Buffer) Lines(substr string) []string {
	var out []string
	for l := range strings.Lines(b.String()) {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}

// Count is how many times substr was written so far.
func (b *Buffer) Count(substr string) int {
	return strings.Count(b.String(), substr)
}

// Logger returns a logger writing text lines, debug level up, into b, and
// into t's output as well when t is not nil, so that a failing test shows
// what was logged.
func (b *Buffer) Logger(t testing.TB) *slog.Logger {
	var w io.Writer = b
	if t != nil {
		w = io.MultiWriter(b, t.Output())
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
