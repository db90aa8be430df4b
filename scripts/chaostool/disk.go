package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spillwayhq/spillway/internal/powercut"
)

// disk is where the spool lives: the power-cut filesystem when FUSE is
// available, else a plain directory (kill -9 only, no full disk).
type disk struct {
	fuse     bool
	strict   bool // powercut.Options.StrictDirectories
	dir, mnt string
	seeds    *rand.Rand
	logf     func(string, ...any)

	mu    sync.Mutex
	fs    *powercut.FS
	stats powercut.Stats // summed over the cuts
}

func newDisk(work string, fuse, strict bool, seed uint64, logf func(string, ...any)) (*disk, error) {
	d := &disk{fuse: fuse, strict: strict, dir: filepath.Join(work, "disk"), mnt: filepath.Join(work, "mnt"),
		seeds: rand.New(rand.NewPCG(seed, 0x6469736b)), logf: logf}
	for _, p := range []string{d.dir, d.mnt} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			return nil, err
		}
	}
	if fuse {
		if err := d.mount(); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// spoolDir is spillway's --spool-dir.
func (d *disk) spoolDir() string {
	if d.fuse {
		return filepath.Join(d.mnt, "spool")
	}
	return filepath.Join(d.dir, "spool")
}

func (d *disk) mount() error {
	fs, err := powercut.Mount(powercut.Options{Dir: d.dir, Mountpoint: d.mnt, Seed: d.seeds.Uint64(),
		StrictDirectories: d.strict, Logf: d.logf})
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.fs = fs
	d.mu.Unlock()
	return nil
}

// cut cuts the power under the process kill stops, then mounts what
// survived. It returns what the cut lost and how long the remount took.
func (d *disk) cut(mode powercut.Mode, kill func() error) (powercut.Stats, time.Duration, error) {
	d.mu.Lock()
	fs := d.fs
	d.fs = nil
	d.mu.Unlock()
	if fs == nil {
		return powercut.Stats{}, 0, fmt.Errorf("cut: not mounted")
	}
	st, err := fs.Cut(mode, kill)
	d.mu.Lock()
	d.stats.FilesUnsynced += st.FilesUnsynced
	d.stats.BytesDropped += st.BytesDropped
	d.stats.BytesKept += st.BytesKept
	d.stats.TornWrites += st.TornWrites
	d.stats.DirOpsDropped += st.DirOpsDropped
	d.stats.DirOpsKept += st.DirOpsKept
	d.mu.Unlock()
	if err != nil {
		return st, 0, err
	}
	t0 := time.Now()
	err = d.mount()
	return st, time.Since(t0), err
}

func (d *disk) current() *powercut.FS {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fs
}

// unmount leaves everything written in dir, as a clean shutdown would.
func (d *disk) unmount() error {
	d.mu.Lock()
	fs := d.fs
	d.fs = nil
	d.mu.Unlock()
	if fs == nil {
		return nil
	}
	return fs.Unmount()
}

func (d *disk) cutStats() powercut.Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

// premake makes the spool directory and fsyncs its parent, so that the
// directory itself survives a cut.
func (d *disk) premake() error {
	dir := d.spoolDir()
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	parent, err := os.Open(filepath.Dir(dir))
	if err != nil {
		return err
	}
	defer parent.Close()
	return parent.Sync()
}
