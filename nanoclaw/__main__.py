from nanoclaw.admin.cli import main

main()
