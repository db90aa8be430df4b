package spool

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
)

func TestPendingRangeSurvivesReopen(t *testing.T) {
	for _, mode := range []SyncMode{SyncAlways, SyncInterval} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{Dir: dir, Consumers: []string{"archive"}, Sync: mode}
			s, err := Open(cfg, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok, err := s.PendingRange("archive"); ok || err != nil {
				t.Fatalf("a fresh spool has a range: %v %v", ok, err)
			}
			want := Pending{First: 7, Last: 42}
			if err := s.SetPending("archive", want); err != nil {
				t.Fatal(err)
			}
			if err := s.SetPending("archive", Pending{First: 9, Last: 8}); err == nil {
				t.Error("an empty range was recorded")
			}
			if err := s.SetPending("nobody", want); !errors.Is(err, ErrUnknownConsumer) {
				t.Errorf("unknown consumer: %v", err)
			}
			if err := s.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			s, err = Open(cfg, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close(context.Background())
			got, ok, err := s.PendingRange("archive")
			if err != nil || !ok || got != want {
				t.Fatalf("after reopen: %+v %v %v, want %+v", got, ok, err, want)
			}
			want.Confirmed = true
			if err := s.SetPending("archive", want); err != nil {
				t.Fatal(err)
			}
			if got, _, _ := s.PendingRange("archive"); got != want {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
}

func TestScratchFileLeavesNothingInTheDirectory(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, Consumers: []string{"archive"}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	f, err := s.ScratchFile()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("an object being built"); err != nil {
		t.Fatal(err)
	}
	// Unlinked while open, a crash cannot leave it behind.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "scratch") {
			t.Errorf("%s in the spool's directory while a scratch file is open", e.Name())
		}
	}
	buf := make([]byte, 9)
	if _, err := f.ReadAt(buf, 3); err != nil || string(buf) != "object be" {
		t.Errorf("read back %q, %v", buf, err)
	}
}
