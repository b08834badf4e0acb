package diffgentor_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	diffgentor "github.com/diffgentor/diffgentor/bindings/go"
)

// repoRoot is the diffgentor checkout holding models/ (found upwards from the package dir).
var repoRoot string

// testRuntime is shared by the tests (ONNX Runtime is loaded once per process anyway).
var testRuntime *diffgentor.Runtime

func modelDir(name string) string { return filepath.Join(repoRoot, "models", name) }

// writeEnvRGB writes img's packed RGB to the file the environment variable env names, if set:
// test.sh compares it with the CLI's pixels for the same request (target/c-test/out/rust*.rgb).
func writeEnvRGB(t *testing.T, env string, img *diffgentor.Image) {
	t.Helper()
	if path := os.Getenv(env); path != "" {
		if err := os.WriteFile(path, img.RGB(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// runtimeOptions honours DG_TEST_INTRA_THREADS, as the C tests do.
func runtimeOptions() []diffgentor.RuntimeOption {
	if s := os.Getenv("DG_TEST_INTRA_THREADS"); s != "" {
		n, err := strconv.Atoi(s)
		if err == nil {
			return []diffgentor.RuntimeOption{diffgentor.WithIntraThreads(n)}
		}
	}
	return nil
}

func TestMain(m *testing.M) {
	dir, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "models", "tiny-sd", "model_index.json")); err == nil {
			repoRoot = dir
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			fmt.Fprintln(os.Stderr, "cannot find models/tiny-sd above the package directory")
			os.Exit(1)
		}
		dir = parent
	}
	testRuntime, err = diffgentor.NewRuntime(runtimeOptions()...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "NewRuntime:", err)
		os.Exit(1)
	}
	code := m.Run()
	testRuntime.Close()
	os.Exit(code)
}
