package diffgentor

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The context watcher raises the C cancel token when ctx is done, and no watcher outlives its
// Generate call.
func TestContextWatcher(t *testing.T) {
	rt, err := NewRuntime()
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	dir, _ := os.Getwd()
	p, err := rt.LoadPipeline(filepath.Join(dir, "..", "..", "models", "digits"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	raised := make(chan struct{})
	testHookTokenRaised = func() { close(raised) }
	defer func() { testHookTokenRaised = nil }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err = p.Generate(ctx, Params{Steps: 5, Progress: func(step, _ int, _ time.Duration) bool {
		if step == 1 {
			cancel()
			select {
			case <-raised:
			case <-time.After(30 * time.Second):
				t.Error("the watcher did not raise the token within 30s")
			}
		}
		return true
	}})
	if !errors.Is(err, ErrCancelled) || !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want ErrCancelled and context.Canceled", err)
	}
	if n := activeWatchers.Load(); n != 0 {
		t.Errorf("%d watchers still running after Generate returned", n)
	}

	// A successful request with a cancellable ctx also leaves no watcher behind.
	testHookTokenRaised = nil
	ctx2, cancel2 := context.WithCancel(context.Background())
	if _, err := p.Generate(ctx2, Params{Steps: 1}); err != nil {
		t.Fatal(err)
	}
	if n := activeWatchers.Load(); n != 0 {
		t.Errorf("%d watchers still running after Generate returned", n)
	}
	cancel2()
}
