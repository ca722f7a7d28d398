"""Task functions: one unit (a book, a conversation, a retention check) in, flat result rows out."""
