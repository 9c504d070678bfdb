"""Questions of different lengths, so batched prompts are ragged as in real traffic."""

QUESTIONS = [
    "What is the capital of France?",
    "Explain photosynthesis to a ten-year-old.",
    "Write a haiku about the sea.",
    "How do I make a cup of green tea?",
    "What are the three states of matter?",
    "Give me three tips for learning a new language quickly and remembering vocabulary.",
    "Why is the sky blue?",
    "Summarise the plot of Romeo and Juliet in a few sentences.",
    "What is the difference between a virus and a bacterium?",
    "List five healthy breakfast ideas.",
    "How does a bicycle stay upright when it is moving?",
    "What is a prime number? Give some examples.",
    "Describe the water cycle.",
    "What should I pack for a weekend hiking trip in the mountains in autumn?",
    "Who painted the Mona Lisa?",
    "How many continents are there, and what are they called?",
    "Write a short thank-you note to a teacher.",
    "What is the boiling point of water at sea level?",
    "Explain what a computer program is.",
    "What causes the seasons on Earth?",
    "Suggest a name for a friendly robot.",
    "How do plants get water from the soil to their leaves?",
    "What is the largest planet in our solar system?",
    "Give me a simple recipe for pancakes.",
    "Why do we need sleep?",
    "What is the Pythagorean theorem?",
    "Tell me a fun fact about octopuses.",
    "How can I save money on groceries each week without eating badly?",
    "What language is spoken in Brazil?",
    "Explain gravity in one paragraph.",
    "What is the tallest mountain in the world?",
    "Write two sentences about autumn leaves.",
]


def question(n: int) -> str:
    return QUESTIONS[n % len(QUESTIONS)]
