module llmos/ollamarender

go 1.19
