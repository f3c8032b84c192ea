// Package snapshottersuite runs containerd's own snapshotter test suite
// (github.com/containerd/containerd/snapshots/testsuite, containerd 1.6 as Debian ships it)
// against an external snapshotter process reached through containerd's proxy client
// (snapshots/proxy) over gRPC: exactly the path containerd itself uses for a proxy plugin.
//
// Environment:
//
//	THINPOOL_SNAPSHOTTER_CMD            shell command that serves the snapshots API; {root} and
//	                                    {socket} are replaced (shell-quoted) by a fresh root
//	                                    directory and the socket path of the test case. Required.
//	THINPOOL_SNAPSHOTTER_NAME           snapshotter name sent in every request (default "thinpool")
//	THINPOOL_SNAPSHOTTER_START_TIMEOUT  how long to wait for the socket (Go duration, default 30s)
//	THINPOOL_SNAPSHOTTER_STOP_TIMEOUT   how long SIGTERM may take before SIGKILL (default 10s)
//
// Each case starts its own process (in its own process group, through `/bin/sh -c "exec CMD"`)
// and stops it afterwards with SIGTERM to that process alone. The case fails when the process
// does not exit cleanly (status 0) within the stop timeout, leaves processes of its group
// running (they are killed), or leaves mounts beside its root.
package snapshottersuite

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

func durationEnv(name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	return def
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func dialUnix(ctx context.Context, socket string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", socket)
}

// mountsUnder lists the mount points at or below dir (from /proc/self/mountinfo).
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		p := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(fields[4])
		if p == dir || strings.HasPrefix(p, dir+"/") {
			out = append(out, p)
		}
	}
	return out
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// startSnapshotter is the suite's SnapshotterFunc.
func startSnapshotter(command, name string) testsuite.SnapshotterFunc {
	startTimeout := durationEnv("THINPOOL_SNAPSHOTTER_START_TIMEOUT", 30*time.Second)
	stopTimeout := durationEnv("THINPOOL_SNAPSHOTTER_STOP_TIMEOUT", 10*time.Second)
	return func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		dir := filepath.Dir(root)
		socket := filepath.Join(dir, "snapshotter.sock")
		logPath := filepath.Join(dir, "snapshotter.log")
		expanded := strings.NewReplacer("{root}", shellQuote(root), "{socket}", shellQuote(socket)).Replace(command)
		logFile, err := os.Create(logPath)
		if err != nil {
			return nil, nil, err
		}
		defer logFile.Close()
		cmd := exec.Command("/bin/sh", "-c", "exec "+expanded)
		cmd.Stdout = logFile
		cmd.Stderr = logFile
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			return nil, nil, fmt.Errorf("cannot start %q: %w", expanded, err)
		}
		pgid := cmd.Process.Pid
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()

		kill := func() {
			syscall.Kill(-pgid, syscall.SIGKILL)
			<-exited
		}
		deadline := time.Now().Add(startTimeout)
		for {
			select {
			case err := <-exited:
				exited <- err
				syscall.Kill(-pgid, syscall.SIGKILL)
				return nil, nil, fmt.Errorf("snapshotter exited before serving (%v): %s", err, tail(logPath, 20))
			default:
			}
			c, err := dialUnix(ctx, socket)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				kill()
				return nil, nil, fmt.Errorf("snapshotter did not listen on %s within %v: %s", socket, startTimeout, tail(logPath, 20))
			}
			time.Sleep(20 * time.Millisecond)
		}

		conn, err := grpc.DialContext(ctx, "unix://"+socket, grpc.WithInsecure(),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return dialUnix(ctx, socket) }))
		if err != nil {
			kill()
			return nil, nil, fmt.Errorf("cannot connect to %s: %w", socket, err)
		}
		sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), name)

		cleanup := func() error {
			var problems []string
			sn.Close()
			conn.Close()
			// SIGTERM to the snapshotter alone: it must release what it started itself.
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-exited:
				if err != nil {
					problems = append(problems, fmt.Sprintf("exited uncleanly after SIGTERM: %v", err))
				}
			case <-time.After(stopTimeout):
				problems = append(problems, fmt.Sprintf("still running %v after SIGTERM; killed", stopTimeout))
				kill()
			}
			// Whatever the snapshotter started in its process group must be gone with it.
			if syscall.Kill(-pgid, 0) == nil {
				problems = append(problems, "left processes of its group running; killed")
				syscall.Kill(-pgid, syscall.SIGKILL)
			}
			if m := mountsUnder(dir); len(m) > 0 {
				problems = append(problems, fmt.Sprintf("left mounts: %s", strings.Join(m, ", ")))
			} else if err := os.RemoveAll(root); err != nil {
				problems = append(problems, fmt.Sprintf("cannot remove the root: %v", err))
			}
			if len(problems) > 0 {
				return errors.New(strings.Join(problems, "; ") + "\n" + tail(logPath, 20))
			}
			return nil
		}
		return sn, cleanup, nil
	}
}

// TestSnapshotterSuite runs every case of containerd's snapshotter test suite.
func TestSnapshotterSuite(t *testing.T) {
	command := os.Getenv("THINPOOL_SNAPSHOTTER_CMD")
	if command == "" {
		t.Skip("THINPOOL_SNAPSHOTTER_CMD is not set")
	}
	name := os.Getenv("THINPOOL_SNAPSHOTTER_NAME")
	if name == "" {
		name = "thinpool"
	}
	testsuite.SnapshotterSuite(t, name, startSnapshotter(command, name))
}
