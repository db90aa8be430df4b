// Command chaostool is scripts/chaos: a soak that runs spillway on a
// power-cut filesystem under load, with a healthy and a flapping
// destination, kills it or cuts its power every 20-60 s, fills its disk
// once, drops events on purpose once, and at the end checks that every
// acknowledged event was delivered or dead-lettered, memory stayed
// bounded, the spool shrank back, and nothing grew across restarts. See
// scripts/chaostool/README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spillwayhq/spillway/internal/powercut"
)

type config struct {
	duration       time.Duration
	seed           uint64
	work           string
	keep           bool
	jsonOut        string
	clients        int
	poisonFrac     float64
	measureFor     time.Duration
	minRun, maxRun time.Duration
	rssLimitMiB    int64
	readyWithin    time.Duration
	drainWithin    time.Duration
	floorWithin    time.Duration
	flapBackoffMax time.Duration
	premade        bool
	strictDirs     bool
	rerun          string // the command that repeats this soak's schedule
}

func main() {
	os.Exit(run())
}

func run() int {
	var c config
	var bin, spillwayBin string
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: scripts/chaos [flags]

A soak on loopback: spillway on a power-cut filesystem (--sync=always) under
half its measured maximum load, a healthy and a flapping destination, a
kill -9 or a power cut every 20-60 s, one full-disk episode, drop-oldest
toggled between runs; then the drain and the checks. Exit status 1 when a
check fails. Needs root and /dev/fuse for the power cuts (without them:
kill -9 only, unless CI=true, which then fails).

`)
		fs.PrintDefaults()
	}
	fs.DurationVar(&c.duration, "duration", 30*time.Minute, "how long the load and the crashes go on (the drain and the checks come after)")
	fs.Uint64Var(&c.seed, "seed", 0, "seed of every random choice: the schedule of crashes, cuts and flaps, the events (default: from the clock; printed)")
	fs.StringVar(&c.work, "work", "", "directory for the spool, the mount and the logs (default: a new temporary directory)")
	fs.BoolVar(&c.keep, "keep", false, "keep the work directory even when every check passes")
	fs.StringVar(&c.jsonOut, "json", "", "also write the figures to this JSON file")
	fs.IntVar(&c.clients, "clients", 8, "concurrent load clients, each with one request in flight")
	fs.Float64Var(&c.poisonFrac, "poison", 0.002, "share of events marked poison, which the flapping destination refuses with 400")
	fs.DurationVar(&c.measureFor, "measure", 5*time.Second, "closed-loop measurement of the maximum rate at the start")
	fs.DurationVar(&c.minRun, "min-run", 20*time.Second, "shortest time between a start and the next kill or cut")
	fs.DurationVar(&c.maxRun, "max-run", 60*time.Second, "longest time between a start and the next kill or cut")
	fs.Int64Var(&c.rssLimitMiB, "rss-limit", 64, "peak RSS (VmHWM) allowed for each spillway process, MiB")
	fs.DurationVar(&c.readyWithin, "ready-within", 90*time.Second, "longest start-up (exec to /readyz 200) before it counts as refused")
	fs.DurationVar(&c.drainWithin, "drain-within", 5*time.Minute, "longest drain after the load stops before delivery counts as stalled")
	fs.DurationVar(&c.floorWithin, "floor-within", 150*time.Second, "longest wait, after the drain, for the spool to shrink back to its floor")
	fs.DurationVar(&c.flapBackoffMax, "flap-backoff-max", 5*time.Second, "backoff_max of the flapping destination")
	fs.BoolVar(&c.premade, "spool-dir-premade", false, "make the spool directory durably (mkdir, fsync its parent) before spillway's first start, as a mounted volume is; by default spillway makes it")
	fs.BoolVar(&c.strictDirs, "strict-dirs", false, "POSIX-strict directories on the power-cut filesystem: a new file's name is durable only once its directory is fsynced (default: as ext4, XFS and btrfs, a new file's fsync makes its name durable)")
	fs.StringVar(&bin, "bin", "", "directory holding the spillway binary (scripts/chaos builds it)")
	fs.StringVar(&spillwayBin, "spillway", "", "spillway binary (default: BIN/spillway)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "chaos: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if spillwayBin == "" {
		if bin == "" {
			fmt.Fprintln(os.Stderr, "chaos: --bin or --spillway is required (run scripts/chaos, which builds spillway)")
			return 2
		}
		spillwayBin = filepath.Join(bin, "spillway")
	}
	switch {
	case c.duration < 30*time.Second:
		fmt.Fprintln(os.Stderr, "chaos: --duration must be at least 30s")
		return 2
	case c.clients < 1:
		fmt.Fprintln(os.Stderr, "chaos: --clients must be at least 1")
		return 2
	case c.poisonFrac < 0 || c.poisonFrac > 1:
		fmt.Fprintln(os.Stderr, "chaos: --poison must be between 0 and 1")
		return 2
	case c.minRun <= 3*time.Second || c.maxRun < c.minRun:
		fmt.Fprintln(os.Stderr, "chaos: --min-run must be over 3s and --max-run at least --min-run")
		return 2
	}
	seedSet := false
	rerun := []string{"scripts/chaos"}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "seed":
			seedSet = true
		case "work", "json", "keep", "bin", "spillway":
		default:
			rerun = append(rerun, "--"+f.Name+"="+f.Value.String())
		}
	})
	if !seedSet {
		c.seed = uint64(time.Now().UnixNano())
	}
	c.rerun = strings.Join(append(rerun, fmt.Sprintf("--seed=%d", c.seed)), " ")

	fuse := true
	if err := powercut.Available(); err != nil {
		if os.Getenv("CI") == "true" {
			fmt.Fprintf(os.Stderr, "chaos: FAIL: power cuts need FUSE, and CI=true: %v\n", err)
			return 1
		}
		fuse = false
		fmt.Fprintf(os.Stderr, "\nchaos: ************************************************************\n"+
			"chaos: WARNING: no FUSE (%v)\n"+
			"chaos: WARNING: this soak runs kill -9 only: NO POWER CUTS, NO FULL DISK.\n"+
			"chaos: WARNING: what it proves is much weaker; run it as root with /dev/fuse.\n"+
			"chaos: ************************************************************\n\n", err)
	}

	work := c.work
	if work == "" {
		w, err := os.MkdirTemp("", "spillway-chaos-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			return 1
		}
		work = w
	} else if err := os.MkdirAll(work, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 1
	} else if entries, _ := os.ReadDir(work); len(entries) > 0 {
		fmt.Fprintf(os.Stderr, "chaos: --work %s is not empty\n", work)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills the soak; Pdeathsig takes spillway
	}()

	s := newSoak(c, spillwayBin, work, fuse)
	defer func() {
		if p := recover(); p != nil {
			s.shutdown() // stop spillway and unmount before dying
			panic(p)
		}
	}()
	err := s.run(ctx)
	s.shutdown()
	if errors.Is(err, context.Canceled) {
		if c.keep {
			fmt.Fprintf(os.Stderr, "chaos: spool and logs kept in %s\n", work)
		} else if c.work == "" {
			os.RemoveAll(work)
		}
		fmt.Fprintln(os.Stderr, "chaos: interrupted")
		return 130
	}
	res := s.result()
	res.print(os.Stdout)
	if c.jsonOut != "" {
		if b, jerr := json.MarshalIndent(res, "", "  "); jerr == nil {
			if werr := os.WriteFile(c.jsonOut, b, 0o644); werr != nil {
				fmt.Fprintln(os.Stderr, "chaos:", werr)
			}
		}
	}
	failed := err != nil || !res.OK
	if c.keep || failed {
		fmt.Fprintf(os.Stderr, "chaos: spool and logs kept in %s (the spool in %s)\n", work, filepath.Join(work, "disk"))
	} else if c.work == "" {
		os.RemoveAll(work)
	}
	switch {
	case err != nil:
		fmt.Fprintf(os.Stderr, "chaos: FAIL (seed %d): %v\nchaos: rerun: %s\n", c.seed, err, c.rerun)
		return 1
	case !res.OK:
		fmt.Fprintf(os.Stderr, "chaos: FAIL (seed %d): %d check(s) failed, listed above\nchaos: rerun: %s\n", c.seed, res.failed(), c.rerun)
		return 1
	}
	if !fuse {
		fmt.Fprintln(os.Stderr, "chaos: WARNING: kill -9 only: no power cut and no full disk were tried (no FUSE)")
	}
	fmt.Fprintf(os.Stderr, "chaos: ok (seed %d)\n", c.seed)
	return 0
}
