package testenv

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ProcessCPU returns the CPU time (user and system) this process has used.
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// ServerCPU returns the CPU time (user and system, to the 10 ms of the kernel's clock ticks) that
// the dev server service (cassandra, zookeeper, ...) has used, read from /proc through the PID
// file deploy/dev's up.sh wrote, and false if there is no such server running (servers started
// otherwise, or a system without /proc).
func ServerCPU(service string) (time.Duration, bool) {
	pid, ok := ServerPID(service)
	if !ok {
		return 0, false
	}
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, false
	}
	// The command (field 2) is in parentheses and may hold spaces: fields count from after it.
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, false
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, true // USER_HZ is 100 on Linux
}

// ServerPID returns the PID of the dev server service that deploy/dev's up.sh started (from its
// PID file), and false if there is none or it is not running.
func ServerPID(service string) (int, bool) {
	dir := os.Getenv("MUSIC_DEV_DIR")
	if dir == "" {
		dir = "/tmp/musicd-dev"
	}
	b, err := os.ReadFile(filepath.Join(dir, "run", service+".pid"))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); err != nil {
		return 0, false
	}
	return pid, true
}
