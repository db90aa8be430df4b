package spool

import (
	"fmt"
	"log/slog"
	"strings"
)

// badgerLogger sends Badger's printf-style logs to slog. Badger tells at
// info level of every table it opens and memtable it replays: that is
// debug detail here, and its debug level is dropped.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.log(slog.LevelError, f, a) }
func (b badgerLogger) Warningf(f string, a ...any) { b.log(slog.LevelWarn, f, a) }
func (b badgerLogger) Infof(f string, a ...any)    { b.log(slog.LevelDebug, f, a) }
func (badgerLogger) Debugf(string, ...any)         {}

func (b badgerLogger) log(level slog.Level, f string, a []any) {
	b.l.Log(nil, level, strings.TrimSpace(fmt.Sprintf(f, a...)), "source", "badger") //nolint:staticcheck // no context in Badger's logger
}
