// Command native-snapshotter serves containerd's own "native" snapshotter over containerd's
// snapshots gRPC API (containerd.services.snapshots.v1.Snapshots) on a unix socket, the way a
// proxy snapshotter does. thinpool's tests use it as the reference peer: its answers are what
// containerd's proxy client expects, and containerd can use it as a proxy plugin.
//
// With -log FILE every call is appended to FILE as one JSON object per line (method, request,
// gRPC status code, error message), so tests can see what containerd asks of a snapshotter.
//
// It stops on SIGTERM or SIGINT: in-flight calls finish, the socket is removed, exit status 0.
//
// Built in GOPATH mode from Debian's golang-github-containerd-containerd-dev (see ../build.sh).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/snapshots/native"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// callLog appends one JSON line per gRPC call.
type callLog struct {
	mu sync.Mutex
	f  *os.File
}

type entry struct {
	Time    string      `json:"time"`
	Method  string      `json:"method"`
	Request interface{} `json:"request"`
	Code    string      `json:"code"`
	Error   string      `json:"error,omitempty"`
}

func (l *callLog) write(method string, req interface{}, err error) {
	if l == nil {
		return
	}
	st := status.Convert(err)
	e := entry{Time: time.Now().UTC().Format(time.RFC3339Nano), Method: method, Request: req, Code: st.Code().String()}
	if err != nil {
		e.Error = st.Message()
	}
	b, merr := json.Marshal(e)
	if merr != nil {
		b, _ = json.Marshal(entry{Time: e.Time, Method: method, Code: e.Code, Error: "cannot encode request: " + merr.Error()})
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.f.Write(append(b, '\n'))
}

func (l *callLog) unary(ctx context.Context, req interface{}, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (interface{}, error) {
	resp, err := handler(ctx, req)
	l.write(info.FullMethod, req, err)
	return resp, err
}

// recvLogger records the request of a server-streaming call (List) when the handler reads it.
type recvLogger struct {
	grpc.ServerStream
	req interface{}
}

func (s *recvLogger) RecvMsg(m interface{}) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		s.req = m
	}
	return err
}

func (l *callLog) stream(srv interface{}, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	w := &recvLogger{ServerStream: ss}
	err := handler(srv, w)
	l.write(info.FullMethod, w.req, err)
	return err
}

func main() {
	root := flag.String("root", "", "directory of the snapshotter's state (created if missing)")
	address := flag.String("address", "", "unix socket to listen on")
	logPath := flag.String("log", "", "append one JSON line per gRPC call to this file")
	flag.Parse()
	if *root == "" || *address == "" {
		fmt.Fprintln(os.Stderr, "usage: native-snapshotter -root DIR -address SOCKET [-log FILE]")
		os.Exit(2)
	}
	if err := run(*root, *address, *logPath); err != nil {
		fmt.Fprintf(os.Stderr, "native-snapshotter: %v\n", err)
		os.Exit(1)
	}
}

func run(root, address, logPath string) error {
	sn, err := native.NewSnapshotter(root)
	if err != nil {
		return fmt.Errorf("cannot open the native snapshotter in %s: %w", root, err)
	}
	defer sn.Close()

	var opts []grpc.ServerOption
	if logPath != "" {
		f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0600)
		if err != nil {
			return fmt.Errorf("cannot open the call log: %w", err)
		}
		defer f.Close()
		l := &callLog{f: f}
		opts = append(opts, grpc.UnaryInterceptor(l.unary), grpc.StreamInterceptor(l.stream))
	}
	server := grpc.NewServer(opts...)
	snapshotsapi.RegisterSnapshotsServer(server, snapshotservice.FromSnapshotter(sn))

	if err := os.Remove(address); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("cannot remove the old socket: %w", err)
	}
	listener, err := net.Listen("unix", address)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w", address, err)
	}
	if err := os.Chmod(address, 0600); err != nil {
		return fmt.Errorf("cannot restrict the socket: %w", err)
	}
	defer os.Remove(address)

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	fmt.Fprintf(os.Stderr, "native-snapshotter: serving %s on %s\n", root, address)

	select {
	case err := <-served:
		return err
	case sig := <-signals:
		fmt.Fprintf(os.Stderr, "native-snapshotter: %v, stopping\n", sig)
		done := make(chan struct{})
		go func() { server.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			server.Stop()
		}
		return nil
	}
}
