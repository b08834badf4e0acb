module github.com/diffgentor/diffgentor/bindings/go

go 1.19
