from app.cli import report_main

report_main()
